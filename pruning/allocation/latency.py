"""Latency allocation: how many channels each group keeps, chosen by measured ONNX Runtime time, not by MACs.

MACs are a poor proxy for time on a CPU runtime: a 1x1 convolution, a depthwise one and a 7x7 stem cost very different
time per MAC, and channel counts that are not a multiple of the kernels' block size (16 floats with AVX-512 in ONNX
Runtime's NCHWc convolutions) fall off the fast path. So, in the spirit of NetAdapt (Yang et al. 2018) and HALP (Shen et
al. 2022):

1. A lookup table of per-layer latency: every convolution / linear layer of the model, as a one-layer ONNX model at
   the channel counts the search asks for, timed in ONNX Runtime at the target batch size and thread count with the
   session options the product ships (:func:`pruning.runtime.session.session`). Keys carry the ORT version, CPU model, batch
   and threads, so one table file can serve several architectures and is never reused on the wrong machine; entries
   keep when and how steadily they were measured, and old or noisy ones are measured again. It is measured lazily
   (only the entries the search visits) and saved as JSON — the prune stage's cached artifact.
2. Calibration against a profile of the real network: each layer's table time is scaled to what its kernel took in
   the network, and the kernels that are not convolutions (SiLU's sigmoid and multiply, squeeze-excitation's pool
   and gating, concat, reorders, pooling) are charged to the convolution they follow, scaling with its output
   channels. The dense estimate's error against the measured dense latency is reported.
3. A greedy path over torch-pruning's dependency groups: every step cuts the group whose cut saves the most estimated
   time per unit of importance lost (the share of what the group still has, so deeper cuts into one group cost more,
   times the group's share of the network's MACs).
   A cut is one, two or four ``step``s (the channel grid): the table prices each count, so counts a kernel handles
   badly are jumped over — the rounding is chosen per group by measurement, not one global ``round_to``. A group
   narrower than a step (a squeeze-excitation's squeeze) keeps its width instead of blocking the others.
4. For a MACs target the path stops at the target (checked on torch-pruning's count). For a speedup target
   (:mod:`pruning.allocation.speedup`) the position on the path — one scalar, monotone in the estimated time — is
   bracketed and bisected on the *measured* speedup: every candidate is timed alternately with the dense network,
   with a confidence interval, and accepted only when the interval's lower bound meets the target; the search stops
   inside [target, 1.15 x target] or at the closest step above the target.

The result is a ``{module: ratio}`` map for torch-pruning's ``pruning_ratio_dict``, so the pruning itself (which
channels, the history replayed on load) is the same code path as MACs allocation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from pruning.allocation.estimate import Estimator, Group
from pruning.allocation.latency_table import LatencyTable, Profile, layer_specs
from pruning.allocation.speedup import search
from pruning.counting import example_input
from pruning.dependency import prunable_groups
from pruning.errors import PruningError
from pruning.runtime.timing import Speedup

log = logging.getLogger(__name__)


@dataclass
class Allocation:
    """Channels kept per group, and what the search estimated and measured."""

    ratios: dict[nn.Module, float]  # for torch-pruning's pruning_ratio_dict
    keep: dict[str, tuple[int, int]]  # group root name -> (channels, kept)
    macs: int
    estimated_ms: float
    dense_estimated_ms: float
    report: dict[str, Any] = field(default_factory=dict)


def _groups(model: nn.Module, input_shape: tuple[int, ...], importance: tp.importance.Importance,
            ignored: list[nn.Module], step: int, max_layer_ratio: float) -> list[Group]:
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input(input_shape))
    groups = []
    for found in prunable_groups(dg, model, ignored):
        group, root, channels = found.group, found.root, found.channels
        with torch.no_grad():
            imp = importance(group)
        if imp is None:
            continue
        scores = np.sort(imp.detach().cpu().numpy().astype(np.float64))
        scores = scores / max(scores.sum(), 1e-12)  # a share of the group: cutting deep into a narrow group costs more
        outs, ins = [], []
        for dep, _ in group:
            m = dep.target.module
            if not isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear):
                continue
            if dg.is_out_channel_pruning_fn(dep.handler):
                outs.append(m)
            elif dg.is_in_channel_pruning_fn(dep.handler):
                ins.append(m)
        # a grouped convolution loses the same channels in every group: counts stay multiples of its groups (as
        # torch-pruning's own channel-group count; depthwise convolutions are not grouped in that sense)
        grid = math.lcm(step, *(m.groups for m in (*outs, *ins) if isinstance(m, nn.Conv1d | nn.Conv2d)
                                and 1 < m.groups != m.in_channels))
        floor = max(grid, int(np.ceil(channels * (1 - max_layer_ratio) / grid)) * grid)
        groups.append(Group(root, found.name, channels, channels, min(floor, channels),
                             scores, outs, ins, grid))
    return groups


JUMPS = (1, 2, 4)  # a greedy cut removes this many steps of channels: the table decides which count is worth it


class GreedyPath:
    """The greedy allocation as a path: cut after cut, each where the most estimated time is saved per importance
    lost. A position on the path (the number of cuts) is the one scalar the speedup search bisects; the estimated
    time falls monotonically along it. Grown on demand, cached per group (a cut only changes the groups that share a
    layer with it)."""

    def __init__(self, groups: list[Group], est: Any, step: int):  # an Estimator, or one of its kind
        self.groups, self.est, self.step = groups, est, step
        for g in groups:
            g.keep = g.channels
        self.cuts: list[tuple[Group, int]] = []  # (group, channels it keeps after the cut)
        self.ms, self.macs = [est.total()], [est.macs()]
        # a group's share of the network's MACs (dense): what cutting all of it would take of the network's capacity
        self.weight = {g: max(est.share(g), 1e-9) for g in groups}
        self.at = 0  # the position the groups' counts are at
        self.best: dict[Group, tuple[float, int, float, int] | None] = {}
        layers = {g: est.layers(g) for g in groups}
        self.neighbours = {g: [h for h in groups if layers[g] & layers[h]] for g in groups}
        self.exhausted = False

    def lost(self, g: Group, nxt: int) -> float:
        """What taking group ``g`` from its count to ``nxt`` loses: the share of the importance the group still has,
        times the group's share of the network's MACs (a channel of a stage's residual stream spans many layers:
        without the weight, a cut there looked as cheap as one of a single expansion, and EfficientNet-like nets lost
        far more MACs than the speedup asked: docs/design.md, "Measured reasons")."""
        removed = g.channels - g.keep
        return float(g.scores[removed:removed + g.keep - nxt].sum() / g.scores[removed:].sum()) * self.weight[g] + 1e-12

    def _best(self, g: Group) -> tuple[float, int, float, int] | None:
        best = None
        for jump in JUMPS:
            nxt = ((g.keep - 1) // g.step - (jump - 1)) * g.step
            if nxt < g.floor:
                break
            saved_ms, saved_macs = self.est.saving(g, nxt)
            lost = self.lost(g, nxt)
            # time per importance; a layer whose timing did not move (noise, below resolution) still ranks by MACs
            score = max(saved_ms, 0.0) / lost + 1e-12 * saved_macs / lost
            if best is None or score > best[0]:
                best = (score, nxt, saved_ms, saved_macs)
        return best

    def go(self, k: int) -> None:
        """Set the groups' counts to position ``k`` (at most the path's length)."""
        if k < self.at:
            for g in self.groups:
                g.keep = g.channels
            self.at = 0
        for g, keep in self.cuts[self.at:k]:
            g.keep = keep
        self.at = k

    def grow(self, done: Callable[[float, int], bool], limit: int = 1_000_000) -> bool:
        """Cut until ``done(estimated ms, macs)`` of the path's end holds; False if every group reached its floor."""
        self.go(len(self.cuts))
        while not done(self.ms[-1], self.macs[-1]) and len(self.cuts) < limit:
            if self.exhausted:
                return False
            for g in self.groups:
                if g not in self.best:
                    self.best[g] = self._best(g)
            options = [(b[0], i) for i, g in enumerate(self.groups) if (b := self.best[g]) is not None]
            if not options:
                self.exhausted = True
                return False
            g = self.groups[max(options)[1]]
            _, nxt, saved_ms, saved_macs = self.best[g]  # type: ignore[misc]
            g.keep = nxt
            self.cuts.append((g, nxt))
            self.ms.append(self.ms[-1] - saved_ms)
            self.macs.append(self.macs[-1] - saved_macs)
            self.at = len(self.cuts)
            for h in self.neighbours[g]:
                self.best.pop(h, None)
        return True


def _uniform(groups: list[Group], est: Estimator, macs_reduction: float) -> int:
    """Every group keeps the same fraction of its channels, rounded to the nearest count on its grid (as
    torch-pruning's uniform ratio with ``round_to``, :func:`pruning.dependency.plan_uniform`): the largest fraction
    whose layers' MACs reach ``macs_reduction``. Sets the groups' counts; returns the MACs."""
    for g in groups:
        g.keep = g.channels
    dense = est.macs()

    def apply(f: float) -> int:
        for g in groups:
            g.keep = min(g.channels, max(g.floor, round(g.channels * f / g.step) * g.step))
        return est.macs()

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if dense / apply(mid) >= macs_reduction:
            lo = mid
        else:
            hi = mid
    return apply(lo)


def ratios(groups: list[Group]) -> dict[nn.Module, float]:
    # torch-pruning keeps int(channels * (1 - ratio)): half a channel of slack makes that exactly ``keep``
    return {g.root: (g.channels - g.keep - 0.5) / g.channels for g in groups if g.keep < g.channels}


def allocate(model: nn.Module, input_shape: tuple[int, ...], importance: tp.importance.Importance,
             ignored: list[nn.Module], table: LatencyTable, *, step: int, max_layer_ratio: float,
             target_macs_reduction: float | None = None, target_speedup: float | None = None,
             measure: Callable[[dict[nn.Module, float]], Speedup] | None = None, strict: bool = True,
             count_macs: Callable[[dict[nn.Module, float]], int] | None = None,
             profile: Callable[[dict[nn.Module, float]], Profile] | None = None,
             max_measurements: int = 14) -> Allocation:
    """Channels per group for a MACs-reduction target or a measured-speedup target.

    Args:
        importance: a torch-pruning importance, ready (gradients computed if it needs them).
        table: the latency lookup table (filled as needed).
        step: channel granularity (the channel method's ``round_to``): counts stay multiples of it.
        measure: the measured speedup (dense / pruned, timed alternately, with its interval) of the model pruned
            with a ratio map (:meth:`Yardstick.speedup`); needed for a speedup target, with a MACs target it picks
            between the greedy and the uniform candidate.
        strict: for a speedup target out of reach, raise PruningError (True) or return the fastest candidate (False,
            with ``report["reached"]`` False).
        count_macs: the MACs (torch-pruning's counter, which also counts BatchNorm, pooling and adds) of the model
            pruned with a ratio map: a MACs target is then met on that count, not only on the layers' sum.
        profile: the per-kernel profile of the model pruned with a ratio map (:meth:`Yardstick.profile`); the
            estimate is calibrated on the dense network's.
        max_measurements: of candidates, for a speedup target.
    """
    if (target_macs_reduction is None) == (target_speedup is None):
        raise ValueError("give exactly one of target_macs_reduction and target_speedup")
    specs = layer_specs(model, input_shape)
    groups = _groups(model, input_shape, importance, ignored, step, max_layer_ratio)
    est = Estimator(specs, groups, table)
    for g in groups:
        g.keep = g.channels
    report: dict[str, Any] = {"step": step, "groups": len(groups)}
    if profile is not None:
        prof = profile({})
        cal = report["calibration"] = {"layers": len(specs), "matched": est.calibrate(prof.nodes),
                                       "profile_run_ms": prof.run_ms}
        # the estimate (layers + the kernels charged to them) against a whole run: the profiled one (slowed down by
        # the profiler between kernels, most on many small kernels) and a plain one timed alternately with it
        cal["profile_error"] = est.total() / prof.run_ms - 1
        if prof.timed_ms:
            cal["timed_ms"] = prof.timed_ms
            cal["error"] = est.total() / prof.timed_ms - 1
    path = GreedyPath(groups, est, step)
    dense_est, dense_macs = path.ms[0], path.macs[0]
    report["dense_estimated_ms"] = dense_est
    if target_macs_reduction is not None:
        macs_target(path, target_macs_reduction, count_macs, measure, step, report)
    else:
        if measure is None:
            raise ValueError("a speedup target needs measure()")
        search(path, measure, target_speedup, strict, max_measurements, report, ratios,  # type: ignore[arg-type]
               uniform=lambda r: _uniform(groups, est, r))
    ms, macs = est.total(), est.macs()
    report.update({"estimated_ms": ms, "macs_reduction": dense_macs / macs, "table_entries": len(table.entries),
                   "table_measured": table.measured, "table_stale": table.stale, "table_seconds": table.seconds})
    return Allocation(ratios(groups), {g.name: (g.channels, g.keep) for g in groups}, macs, ms, dense_est, report)


def macs_target(path: GreedyPath, target: float, count_macs: Callable[[Any], int] | None,
                measure: Callable[[dict[nn.Module, float]], Speedup] | None, step: int, report: dict[str, Any],
                counts: Callable[[list[Group]], Any] = ratios) -> None:
    """Cut along the path until the MACs target holds (on torch-pruning's count of the model pruned with
    ``counts(groups)`` if given); with ``measure``, the uniform grid at the same MACs is timed against it and the
    faster kept."""
    groups, est, dense_macs = path.groups, path.est, path.macs[0]
    aim = target
    full = count_macs({}) if count_macs else None
    for _ in range(64):  # each round cuts at least one more step, so this ends at the target or the floors
        path.grow(lambda _ms, m, a=aim: dense_macs / m >= a)
        macs = path.macs[-1]
        if dense_macs / macs < aim:
            raise PruningError(f"a {target}x MACs reduction is out of reach with step {step} "
                               f"(at most {dense_macs / macs:.2f}x before every group is at its floor)",
                               field="target_macs_reduction")
        if full is None:
            break
        reached = full / count_macs(counts(groups))  # type: ignore[misc]
        report["counted_macs_reduction"] = reached
        if reached >= target:
            break
        # the layers' sum misses a few per cent of the count: aim higher, at least one step past where we are
        aim = max(aim * target / reached * 1.002, dense_macs / macs * 1.0001)
    report["chosen"] = "greedy"
    if measure is None:
        return
    greedy = {g: g.keep for g in groups}
    macs = est.macs()
    greedy_sp = measure(ratios(groups))
    umacs = _uniform(groups, est, dense_macs / macs)
    uniform_sp = measure(ratios(groups))
    # the MACs target holds on torch-pruning's count for the uniform grid too, or it is no candidate
    counted = full / count_macs(ratios(groups)) if full and count_macs else dense_macs / umacs
    report["candidates"] = {"greedy": {**greedy_sp.as_dict(), "macs_reduction": dense_macs / macs},
                            "uniform": {**uniform_sp.as_dict(), "macs_reduction": dense_macs / umacs}}
    # only at (nearly) equal MACs; each a median of paired rounds against dense, never a single timing
    if (uniform_sp.median > greedy_sp.median and counted >= target
            and 1.0 <= (dense_macs / umacs) / (dense_macs / macs) <= 1.03):
        report["chosen"] = "uniform"
    else:
        for g in groups:
            g.keep = greedy[g]
