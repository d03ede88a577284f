"""The latency estimate's bookkeeping (no timings): the channel counts it prices are the ones torch-pruning builds, on
every family users bring, and its calibration finds every layer in an ONNX Runtime profile (also at NCHWc-padded
channel counts) and charges the other kernels to the right layer."""

import pytest
import torch
import torch_pruning as tp

import tests.test_user_models as families
from pruning import dependency
from pruning.allocation import latency as lat
from pruning.allocation import latency_table as lt
from pruning.allocation.estimate import Estimator
from tests.allocation.test_speedup_search import FakeTable

SHAPE = families.SHAPE
FAMILIES = ["Residual", "SqueezeExcitation", "DenseConcat", "Depthwise", "Grouped", "DenseGrowth12", "RegNetLike"]


def _estimator(model, step=8):
    groups = lat._groups(model, SHAPE, tp.importance.GroupMagnitudeImportance(p=2),
                         dependency.ignored_modules(model, []), step, max_layer_ratio=0.9)
    return groups, Estimator(lt.layer_specs(model, SHAPE), groups, FakeTable(batch=1, threads=1))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_estimate_prices_the_channel_counts_torch_pruning_builds(family):
    torch.manual_seed(0)
    model = getattr(families, family)().eval()
    groups, est = _estimator(model)
    cut = 0
    for i, g in enumerate(groups):  # every other group cut by a step or two (at least one group per net)
        if i % 2 == 0 and g.channels - g.step * (1 + i % 4 // 2) >= g.floor:
            g.keep = g.channels - g.step * (1 + i % 4 // 2)
            cut += 1
    assert cut
    names = {m: n for n, m in model.named_modules()}
    pruned = lt.pruned_copy(model, SHAPE, lat.ratios(groups), [])
    built = {names_p: spec for m, spec in lt.layer_specs(pruned, SHAPE).items()
             for names_p in [dict((mm, n) for n, mm in pruned.named_modules())[m]]}
    for m in est.specs:
        want = built[names[m]]
        got = est.spec(m)
        assert (got.cin, got.cout, got.groups) == (want.cin, want.cout, want.groups), names[m]
    assert est.macs() == sum(s.macs() for s in built.values())


def test_a_dense_layer_sees_every_group_of_its_concatenated_input():
    torch.manual_seed(0)
    model = families.DenseConcat().eval()
    groups, est = _estimator(model)
    by_root = {g.root: g for g in groups}
    stem, l1 = by_root[model.stem[0]], by_root[model.l1[0]]
    stem.keep, l1.keep = 24, 16
    assert est.spec(model.transition[0]).cin == 96 - 8 - 16  # the concat of stem, l1 and l2's outputs
    assert est.spec(model.l2[0]).cin == 64 - 8 - 16


def _node(op, x, w=(), ms=1.0):
    return lt.Node(op, tuple(x), tuple(w), ms)


def test_calibration_matches_padded_layers_and_charges_pre_activation_kernels_to_the_next_layer():
    torch.manual_seed(0)
    model = families.DenseConcat().eval()
    _, est = _estimator(model)
    h = SHAPE[1]
    nodes = [_node("Conv", (1, 3, h, h), (32, 3, 3, 3), 2.0),             # stem
             _node("Conv", (1, 32, h, h), (32, 32, 3, 3), 3.0),           # l1
             _node("Concat", (1, 32, h, h), (), 0.5),                     # follows l1, its width: l1's tail
             _node("BatchNormalization", (1, 64, h, h), (), 0.4),         # on l2's input (64): l2's lead
             _node("Conv", (1, 64, h, h), (32, 64, 3, 3), 4.0),           # l2
             _node("Relu", (1, 96, h, h), (), 0.3),                       # on the transition's input: its lead
             _node("Conv", (1, 96, h, h), (64, 96, 1, 1), 1.0),           # transition
             _node("GlobalAveragePool", (1, 64, h, h), (), 0.1),          # follows it
             _node("Gemm", (1, 64), (10,), 0.2)]                          # head
    assert est.calibrate(nodes) == 5
    assert est.factor[model.l2[0]] == pytest.approx(4.0 / FakeTable(batch=1, threads=1).ms(est.spec(model.l2[0])))
    assert est.lead == {model.l2[0]: pytest.approx(0.4), model.transition[0]: pytest.approx(0.3)}
    assert est.tail[model.l1[0]] == pytest.approx(0.5) and est.tail[model.transition[0]] == pytest.approx(0.1)
    assert est.total() == pytest.approx(sum(n.ms for n in nodes))  # every kernel counted once
    # cut, the same kernels as ORT runs them in NCHWc: 24 channels padded to 32, a concat of 56 to 64, of 88 to 96
    groups, est = _estimator(model)
    next(g for g in groups if g.root is model.stem[0]).keep = 24
    assert (est.spec(model.l2[0]).cin, est.spec(model.transition[0]).cin) == (56, 88)
    assert est.calibrate(nodes) == 5
    assert est.lead.keys() == {model.l2[0], model.transition[0]}
    assert est.lead[model.l2[0]] == pytest.approx(0.4 * 64 / 56)  # stored per dense input channel
