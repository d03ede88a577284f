import copy

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp

from pruning import criteria, dependency
from pruning.arrays import load_split
from pruning.criteria.oracle import LossChangeImportance, oracle_correlation
from pruning.data import DataConfig, Split
from pruning.errors import PruningError
from pruning.training import Optim, fit
from pruning.zoo import build_model

# one worker runs this module: its costly fixture is built once, not once per xdist worker
pytestmark = pytest.mark.xdist_group("test_oracle")

SHAPE = (1, 8, 8)


@pytest.fixture(scope="session")  # session: built once even when other modules' tests run between this one's
def trained():
    (x, y), _ = load_split(DataConfig(), 0)
    x, y = torch.from_numpy(x[:512]), torch.from_numpy(y[:512])
    torch.manual_seed(0)
    model = build_model("resnet", {"widths": [8, 16, 16]}, SHAPE, 10)
    fit(model, Split(x, y), Optim(3, 64, 0.05), seed=0, desc="t")
    return model.eval(), x[:128], y[:128]


def _groups(model):
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, *SHAPE))
    return dg, list(dg.get_all_groups(ignored_layers=[model.classifier], root_module_types=[torch.nn.Conv2d]))


def test_loss_change_equals_the_loss_after_really_removing_the_channel(trained):
    model, x, y = trained
    oracle = LossChangeImportance()
    oracle.bind(model, x, y)
    with torch.no_grad():
        base = F.cross_entropy(model(x), y).item()
    dg, groups = _groups(model)
    checked = 0
    for group in groups[:4]:  # stem (shared with the residual stream), inner convs, a shortcut group
        scores = oracle(group)
        root = group[0].dep.target.module
        name = dg._module2name[root]
        for channel in (0, len(scores) - 1):
            removed = copy.deepcopy(model)
            module = dict(removed.named_modules())[name]
            g = tp.DependencyGraph().build_dependency(removed, torch.randn(1, *SHAPE)).get_pruning_group(
                module, group[0].dep.handler, [channel])
            g.prune()
            with torch.no_grad():
                truth = F.cross_entropy(removed.eval()(x), y).item() - base
            assert scores[channel].item() == pytest.approx(truth, abs=1e-5)
            checked += 1
    assert checked == 8
    x_probe = torch.randn(3, *SHAPE)
    with torch.no_grad():  # scoring left the model as it was
        assert torch.equal(model(x_probe), model(x_probe))


def test_loss_change_scores_a_dead_channel_zero_and_a_live_one_higher(trained):
    model, x, y = trained
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.layers[0].bn1.weight[3] = 0
        model.layers[0].bn1.bias[3] = 0
    oracle = LossChangeImportance()
    oracle.bind(model, x, y)
    _, groups = _groups(model)
    group = next(g for g in groups if g[0].dep.target.module is model.layers[0].conv1)
    scores = oracle(group)
    assert abs(scores[3].item()) < 1e-6
    assert scores.max().item() > 1e-3


def test_loss_change_names_the_limit_when_the_budget_is_exceeded(trained):
    model, x, y = trained
    oracle = LossChangeImportance(max_channels=10)
    oracle.bind(model, x, y)
    _, groups = _groups(model)
    with pytest.raises(PruningError, match="needs more than 10 loss evaluations") as exc:
        for group in groups:
            oracle(group)
    assert exc.value.field == "oracle_max_channels"


def test_oracle_correlation_is_one_for_the_oracle_and_lower_for_random(trained):
    model, x, y = trained
    oracle = LossChangeImportance()
    oracle.bind(model, x, y)
    ignored = dependency.ignored_modules(model, [])
    assert all(v == pytest.approx(1.0) for v in oracle_correlation(model, SHAPE, oracle, oracle, ignored).values())
    torch.manual_seed(0)
    random = oracle_correlation(model, SHAPE, criteria.make("random"), oracle, ignored)
    l1 = oracle_correlation(model, SHAPE, criteria.make("l1"), oracle, ignored)
    assert len(random) == len(l1) >= 4
    assert sum(random.values()) / len(random) < 0.9
