"""The speedup target's search on a synthetic latency model (a fake table and a fake measurement, no timings): it
converges inside the overshoot bound although the estimate is wrong, is not fooled by noise, and refuses what is out
of reach. Real timings: python -m bench.latency."""

import math

import numpy as np
import pytest
import torch
import torch_pruning as tp

from pruning import dependency
from pruning.allocation import latency as lat
from pruning.allocation import latency_table as lt
from pruning.allocation.speedup import OVERSHOOT, SETTLE
from pruning.errors import PruningError
from pruning.runtime.timing import Speedup, median_interval
from pruning.zoo import build_model

SHAPE = (3, 32, 32)


class FakeTable(lt.LatencyTable):
    """Per-layer 'latency' from a formula: what the search believes (MACs-proportional, nothing else)."""

    def ms(self, spec):
        return spec.macs() * 1e-6


def true_ms(net, ratios):
    """The synthetic machine: a fixed cost the estimate does not see, layers slower than their MACs say, channel
    counts off the 16-grid slower still, and per-channel elementwise work."""
    pruned = lt.pruned_copy(net, SHAPE, ratios, [])
    ms = 0.4
    for s in lt.layer_specs(pruned, SHAPE).values():
        ms += s.macs() * 1.7e-6 * (1.3 if s.cout % 16 else 1.0) + 2e-4 * s.cout * math.prod(s.out_spatial() or (1,))
    return ms


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_model("resnet", {"widths": [32, 64, 128], "blocks": [1, 1, 1]}, SHAPE, 10).eval()


def run(net, target, measure, **kw):
    return lat.allocate(net, SHAPE, tp.importance.GroupMagnitudeImportance(p=2), dependency.ignored_modules(net, []),
                        FakeTable(batch=1, threads=1), step=8, max_layer_ratio=0.9, target_speedup=target,
                        measure=measure, **kw)


def exact(net, calls):
    dense = true_ms(net, {})

    def measure(ratios):
        calls.append(ratios)
        r = dense / true_ms(net, ratios)
        return Speedup(r, r * 0.99, r * 1.01, 5, dense, dense / r)
    return measure


@pytest.mark.parametrize("target", [1.5, 2.0, 3.0])
def test_the_search_converges_inside_the_overshoot_bound_although_the_estimate_is_wrong(net, target):
    calls = []
    alloc = run(net, target, exact(net, calls))
    report = alloc.report
    assert report["reached"] is True
    chosen = report["speedup"]
    assert target <= chosen["low"] and chosen["speedup"] <= OVERSHOOT * target or not report["within_overshoot_bound"]
    accepted = [r for r in report["rounds"] if r["low"] >= 1.03 * target]
    if not report["within_overshoot_bound"]:
        # only where the step makes the band impossible: the greedy bracket closed on neighbouring positions (one
        # cut of one step from short of the target to past the bound) and no candidate landed inside; then the
        # closest above the target
        lo, hi = report["bracket"]
        assert hi - lo == 1 and all(r["speedup"] > OVERSHOOT * target for r in accepted), report["rounds"]
        assert chosen["speedup"] == min(r["speedup"] for r in accepted)
    assert len(calls) == len(report["rounds"]) <= 14
    # every round is recorded with its interval, and the estimate was really off (the measurements steered it)
    assert all({"candidate", "speedup", "low", "high", "rounds", "macs_reduction"} <= set(r) for r in report["rounds"])
    greedy = [r for r in report["rounds"] if r["candidate"] == "greedy"]
    assert greedy and {r["candidate"] for r in report["rounds"]} == {"greedy", "uniform"}  # both families searched
    assert any(abs(r["estimated_speedup"] / r["speedup"] - 1) > 0.1 for r in greedy)
    # the least pruned accepted candidate in the band's middle wins (else inside the bound, else the least pruned)
    for bound in (SETTLE, OVERSHOOT, math.inf):
        inside = [r for r in accepted if r["speedup"] <= bound * target]
        if inside:
            break
    assert alloc.report["macs_reduction"] == pytest.approx(min(r["macs_reduction"] for r in inside), rel=1e-6)
    # the result is the allocation measured: its counts give the same true speedup
    assert true_ms(net, {}) / true_ms(net, alloc.ratios) == pytest.approx(chosen["speedup"])


def test_noise_does_not_make_the_search_accept_a_model_short_of_the_target(net):
    dense = true_ms(net, {})
    rng = np.random.default_rng(0)

    def noisy(ratios):  # 9 alternating rounds whose ratios are off by +-15 % (a busy machine), seeded
        r = dense / true_ms(net, ratios)
        rounds = r * np.exp(rng.normal(0, 0.15, 9))
        low, high = median_interval(rounds)
        return Speedup(float(np.median(rounds)), low, high, 9, dense, dense / r)

    for _ in range(3):
        alloc = run(net, 2.0, noisy)
        assert alloc.report["reached"]
        assert dense / true_ms(net, alloc.ratios) >= 2.0 * 0.97  # accepted on the interval's lower bound


def test_a_target_out_of_reach_is_refused_or_the_fastest_candidate_returned(net):
    with pytest.raises(PruningError, match="out of reach"):
        run(net, 60.0, exact(net, []))
    alloc = run(net, 60.0, exact(net, []), strict=False)
    assert alloc.report["reached"] is False
    assert alloc.report["rounds"] and alloc.report["chosen"] == "greedy"


def test_a_cut_jumps_over_channel_counts_the_table_prices_badly(net):
    class Grid(FakeTable):  # counts off the 16-grid cost as much as the next multiple of 16 up
        def ms(self, spec):
            c = -(-spec.cout // 16) * 16
            return spec.with_channels(spec.cin, c).macs() * 1e-6

    alloc = lat.allocate(net, SHAPE, tp.importance.GroupMagnitudeImportance(p=2), dependency.ignored_modules(net, []),
                         Grid(batch=1, threads=1), step=8, max_layer_ratio=0.9, target_macs_reduction=2.0)
    cut = [(c, k) for c, k in alloc.keep.values() if k < c]
    assert cut and all(k % 16 == 0 for _, k in cut)  # step 8, but 8-off counts save nothing here: never chosen


class WideGrouped(torch.nn.Module):
    """ResNeXt-like: 8 groups of 8 channels in the 3x3 convolution; the allocation's step is 16."""

    def __init__(self):
        super().__init__()
        from tests.test_user_models import cbr

        self.stem = cbr(3, 64)
        self.block = torch.nn.Sequential(cbr(64, 64, k=1), cbr(64, 64, groups=8), torch.nn.Conv2d(64, 64, 1),
                                         torch.nn.BatchNorm2d(64))
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.relu(x + self.block(x)).mean((2, 3)))


@pytest.mark.parametrize("family", ["SqueezeExcitation", "WideGrouped", "DenseConcat"])
def test_the_speedup_search_prunes_se_grouped_and_concat_nets_to_valid_counts(family):
    import tests.test_user_models as families

    torch.manual_seed(0)
    model = (WideGrouped if family == "WideGrouped" else getattr(families, family))().eval()
    shape = families.SHAPE

    def measure(ratios):
        r = sum(s.macs() for s in lt.layer_specs(model, shape).values()) / sum(
            s.macs() for s in lt.layer_specs(lt.pruned_copy(model, shape, ratios, []), shape).values())
        return Speedup(r, r, r, 5, 1.0, 1.0 / r)

    alloc = lat.allocate(model, shape, tp.importance.GroupMagnitudeImportance(p=2), dependency.ignored_modules(model, []),
                         FakeTable(batch=1, threads=1), step=16, max_layer_ratio=0.9, target_speedup=1.4, measure=measure)
    assert alloc.report["reached"] and any(k < c for c, k in alloc.keep.values())
    pruned = lt.pruned_copy(model, shape, alloc.ratios, [])
    x = torch.randn(2, *shape)
    assert pruned(x).shape == model(x).shape
    for m in pruned.modules():
        if isinstance(m, torch.nn.Conv2d) and 1 < m.groups != m.in_channels:
            assert m.in_channels % m.groups == 0 and m.out_channels % 8 == 0  # 8 groups kept, each alike
    # a squeeze narrower than the step keeps its width instead of blocking the net
    if family == "SqueezeExcitation":
        assert pruned.se[1].out_channels == 4
