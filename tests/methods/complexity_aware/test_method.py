"""prune.method: complexity_aware on the families users bring: gates everywhere torch-pruning and the residual finder
see, live removal of units and blocks, and a model file that rebuilds the result."""

from __future__ import annotations

import pytest
import torch

from pruning import checkpoint
from pruning.counting import count_macs
from pruning.data import Data, Split
from pruning.methods import METHODS
from pruning.methods.complexity_aware import method as complexity
from pruning.methods.complexity_aware.config import RETRAIN_FROM_SCRATCH
from pruning.methods.complexity_aware.run import Run
from tests.test_user_models import FAMILIES, SHAPE, Residual, _ctx

# pressure high enough that a few steps of 2-batch epochs remove structures: what matters here is that removal works
# on every family, not the trade-off (bench complexity measures that)
EAGER = {"epochs": 4, "warmup_epochs": 0, "strength": 50.0, "theta_lr": 0.5, "patience": 1, "batch_size": 32,
         "retrain_epochs": 0}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_every_family_trains_with_gates_loses_structures_and_its_model_file_rebuilds_it(family, data, tmp_path):
    torch.manual_seed(0)
    cfg = complexity.Config(**EAGER)
    out = METHODS["complexity_aware"].apply(family().eval(), cfg, _ctx(family, data, tmp_path))
    dense_macs = count_macs(family(), SHAPE)[0]
    pruned = out.model.eval()
    assert count_macs(pruned, SHAPE)[0] < dense_macs
    assert out.edits, "nothing was removed"
    x = data.test.x[:4]
    assert pruned(x).shape == (4, 10)
    epochs = out.report["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert {"expected_macs", "live_macs", "units_alive", "blocks_alive", "strength"} <= epochs[-1].keys()
    assert out.report["undecided_at_end"] <= 0.5
    path = tmp_path / "m.pt"
    arch = f"tests.test_user_models:{family.__name__}"
    checkpoint.save_model(path, pruned, arch=arch, kwargs={}, input_shape=SHAPE, num_classes=10, edits=out.edits)
    loaded, _ = checkpoint.load_model(path, arch=arch)  # weights_only=True: the edits replay on a fresh build
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_the_default_knobs_gate_every_family(family, data, tmp_path):
    run = Run(family(), complexity.Config(), _ctx(family, data, tmp_path))
    assert run.gates.groups, "no unit gate"
    has_block = family.__name__ in ("Residual", "SqueezeExcitation", "Grouped", "RegNetLike")
    assert bool(run.gates.blocks) == has_block
    macs, _ = run.gates.expected(torch.ones(run.gates.size))
    assert 0.8 * count_macs(family(), SHAPE)[0] <= float(macs) <= count_macs(family(), SHAPE)[0]


def test_a_residual_block_is_removed_as_a_whole_when_its_gate_dies(data, tmp_path):
    cfg = complexity.Config(**{**EAGER, "unit_gates": False, "layer_vs_unit": 1.0})
    out = complexity.apply(Residual().eval(), cfg, _ctx(Residual, data, tmp_path))
    assert out.report["removed_blocks"] or out.report["final_mode_blocks_removed"]
    assert [e["kind"] for e in out.edits] == ["blocks"] * len(out.edits)


def test_a_layer_keeps_its_last_unit(data, tmp_path):
    cfg = complexity.Config(**{**EAGER, "block_gates": False, "strength": 1e4})
    out = complexity.apply(Residual().eval(), cfg, _ctx(Residual, data, tmp_path))
    for m in out.model.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert m.out_channels >= 1 and m.in_channels >= 1
    assert out.model(data.test.x[:2]).shape == (2, 10)


def test_config_rejects_what_it_cannot_do():
    with pytest.raises(ValueError):
        complexity.Config(layer_vs_unit=1.5)
    with pytest.raises(ValueError):
        complexity.Config(target_macs_reduction=1.0)
    with pytest.raises(ValueError):
        complexity.Config(estimator="straight_through")


def test_a_macs_target_lands_within_ten_percent(data, tmp_path):
    """The dual ascent steers the strength; the settle phase's cut (θ's ranking, nearest the budget) lands on it."""
    cfg = complexity.Config(epochs=6, warmup_epochs=1, settle_epochs=2, target_macs_reduction=2.0, batch_size=32,
                            theta_lr=0.2, retrain_epochs=0)
    out = complexity.apply(Residual().eval(), cfg, _ctx(Residual, data, tmp_path))
    achieved = count_macs(Residual(), SHAPE)[0] / count_macs(out.model, SHAPE)[0]
    assert 1.8 <= achieved <= 2.2, achieved
    assert out.report["undecided_at_end"] == 0.0  # every gate annealed to 0 or 1
    assert out.report["epochs"][-1]["strength"] > 0


class TwoInputs(torch.nn.Module):
    """An image and a feature vector, fused before the classifier (a multi-input model)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.mlp = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(image).mean((2, 3)), self.mlp(extra)], 1))


def test_a_two_input_model_is_gated_pruned_and_rebuilt(data, tmp_path):
    from pruning.methods import Context

    x, y = data.train.x, data.train.y
    extra = torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3)), x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2))], 1)
    xt = data.test.x
    extra_t = torch.stack([xt.mean((1, 2, 3)), xt.std((1, 2, 3)), xt[:, 0].mean((1, 2)), xt[:, 1].mean((1, 2))], 1)
    two = Data(Split((x, extra), y), Split((xt, extra_t), data.test.y), None, 10)
    ctx = Context(data=two, seed=0, device="cpu", build=TwoInputs, latency_table=tmp_path / "t.json", opset=17)
    torch.manual_seed(0)
    out = complexity.apply(TwoInputs().eval(), complexity.Config(**EAGER), ctx)
    assert out.edits and count_macs(out.model, two.spec)[0] < count_macs(TwoInputs(), two.spec)[0]
    example = (xt[:3], extra_t[:3])
    assert out.model.eval()(*example).shape == (3, 10)
    path = tmp_path / "m.pt"
    arch = "tests.methods.complexity_aware.test_method:TwoInputs"
    checkpoint.save_model(path, out.model, arch=arch, kwargs={}, input_shape=None, num_classes=10, edits=out.edits,
                          example=two.example)
    loaded, _ = checkpoint.load_model(path, arch=arch)
    with torch.no_grad():
        assert torch.equal(loaded(*example), out.model(*example))


def test_retrain_epochs_train_the_found_structure_again_from_new_weights(data, tmp_path):
    # the structure the search found (its edits) ships, with weights trained anew (bench complexity_structure: the
    # search's own weights are what lose accuracy)
    family = FAMILIES[0]
    outs = []
    for retrain in (0, 1):
        torch.manual_seed(0)
        outs.append(METHODS["complexity_aware"].apply(family().eval(),
                                                      complexity.Config(**{**EAGER, "retrain_epochs": retrain}),
                                                      _ctx(family, data, tmp_path)))
    searched, retrained = outs
    assert retrained.edits == searched.edits and searched.edits  # the same structure
    assert {k: v.shape for k, v in retrained.model.state_dict().items()} == \
        {k: v.shape for k, v in searched.model.state_dict().items()}
    assert len(retrained.report["retrain"]) == 1 and "retrain" not in searched.report
    weights = [k for k, v in searched.model.state_dict().items() if k.endswith("weight")]
    assert any(not torch.equal(retrained.model.state_dict()[k], searched.model.state_dict()[k]) for k in weights)
    # by default from scratch (bench complexity: the search's own weights lose accuracy), not from a dense start
    assert (complexity.Config().retrain, complexity.Config(start="dense").retrain) == (RETRAIN_FROM_SCRATCH, 0)
