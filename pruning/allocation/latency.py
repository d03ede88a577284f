"""Latency allocation: how many channels each group keeps, chosen by measured ONNX Runtime time, not by MACs.

MACs are a poor proxy for time on a CPU runtime: a 1x1 convolution, a depthwise one and a 7x7 stem cost very different
time per MAC, and channel counts that are not a multiple of the kernels' block size (16 floats with AVX-512 in ONNX
Runtime's NCHWc convolutions) fall off the fast path. So, in the spirit of NetAdapt (Yang et al. 2018) and HALP (Shen et
al. 2022):

1. A lookup table of per-layer latency: every convolution / linear layer of the model, as a one-layer ONNX model at
   the channel counts the search asks for, timed in ONNX Runtime at the target batch size and thread count with the
   session options the product ships (:func:`pruning.runtime.session.session`). Keys carry the ORT version, CPU model, batch
   and threads, so one table file can serve several architectures and is never reused on the wrong machine. It is
   measured lazily (only the entries the search visits) and saved as JSON — the prune stage's cached artifact.
2. The table's one-layer times are calibrated, layer by layer, to the kernel times of a profile of the real network.
3. A greedy allocation over torch-pruning's dependency groups: every step removes ``step`` channels (``round_to``) from
   the group whose removal saves the most estimated time per unit of importance lost (the share of what the group
   still has, so deeper cuts into one group cost more), until the MACs or the latency target is met. Channel counts
   stay multiples of ``step``.
4. For a latency target, the estimate (sum of layers + the measured rest of the network) is checked against the real
   pruned network, exported and timed, and the search corrected until the measured speedup holds. The uniform ratio on
   the same grid is timed as a second candidate; the least-pruned candidate reaching the target wins.

The result is a ``{module: ratio}`` map for torch-pruning's ``pruning_ratio_dict``, so the pruning itself (which
channels, the history replayed on load) is the same code path as MACs allocation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from pruning.allocation.latency_table import Kernel, LatencyTable, LayerSpec, layer_specs
from pruning.counting import example_input
from pruning.errors import PruningError

log = logging.getLogger(__name__)


@dataclass(eq=False)  # identity: groups are dict keys
class _Group:
    root: nn.Module
    name: str
    channels: int
    keep: int
    floor: int  # fewest channels it may keep
    scores: np.ndarray  # importance per channel, ascending, mean 1
    outs: list[nn.Module]  # layers whose output channels are this group's
    ins: list[nn.Module]  # layers whose input channels are this group's


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
            ignored: list[nn.Module], step: int, max_layer_ratio: float) -> list[_Group]:
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input(input_shape))
    names = {m: n for n, m in model.named_modules()}
    groups = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv1d, nn.Conv2d, nn.Linear]):
        root = group[0].dep.target.module
        channels = dg.get_out_channels(root)
        if not channels:
            continue
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
        floor = max(step, int(np.ceil(channels * (1 - max_layer_ratio) / step)) * step)
        groups.append(_Group(root, names.get(root, type(root).__name__), channels, channels, min(floor, channels),
                             scores, outs, ins))
    return groups


def _next_keep(g: _Group, step: int) -> int | None:
    """The next smaller channel count on the ``step`` grid, or None at the floor."""
    nxt = (g.keep - 1) // step * step
    return nxt if nxt >= g.floor else None


class _Estimator:
    """Estimated network latency = sum over its layers of the table's latency at their current channel counts."""

    def __init__(self, specs: dict[nn.Module, LayerSpec], groups: list[_Group], table: LatencyTable):
        self.specs, self.table = specs, table
        self.factor: dict[nn.Module, float] = {}  # in-network / one-layer time, from a profile of the real network
        self.out_of: dict[nn.Module, _Group] = {}
        self.in_of: dict[nn.Module, _Group] = {}
        for g in groups:
            for m in g.outs:
                self.out_of[m] = g
            for m in g.ins:
                self.in_of[m] = g

    def spec(self, m: nn.Module, override: tuple[_Group, int] | None = None) -> LayerSpec:
        s = self.specs[m]

        def count(g: _Group | None, full: int) -> int:
            if g is None:
                return full
            return override[1] if override and override[0] is g else g.keep

        cout = count(self.out_of.get(m), s.cout)
        cin = cout if s.depthwise else count(self.in_of.get(m), s.cin)
        return s.with_channels(cin, cout)

    def layers(self, g: _Group) -> set[nn.Module]:
        return {m for m in (*g.outs, *g.ins) if m in self.specs}

    def ms(self, m: nn.Module, spec: LayerSpec) -> float:
        return self.table.ms(spec) * self.factor.get(m, 1.0)

    def total(self) -> float:
        return sum(self.ms(m, self.spec(m)) for m in self.specs)

    def calibrate(self, kernels: list[Kernel]) -> int:
        """Scale each layer's table time to what its kernel took inside the network (a profile of the network at the
        current channel counts). Kernels are matched to layers by input and weight shapes, in order. Returns the
        number of layers matched."""
        queues: dict[tuple[int, ...], deque[nn.Module]] = defaultdict(deque)
        for m in self.specs:
            sp = self.spec(m)
            if sp.kind == "conv":
                queues[(sp.cin, *sp.spatial, sp.cout, sp.cin // sp.groups, *sp.kernel)].append(m)
        matched = 0
        for x, w, ms in kernels:
            queue = queues.get((*x[1:], *w)) if len(x) >= 3 and len(w) == len(x) else None
            if queue:
                m = queue.popleft()
                one = self.table.ms(self.spec(m))
                if one > 0 and ms > 0:
                    self.factor[m] = ms / one
                    matched += 1
        return matched

    def macs(self) -> int:
        return sum(self.spec(m).macs() for m in self.specs)

    def saving(self, g: _Group, keep: int) -> tuple[float, int]:
        """(ms saved, MACs saved) by taking group ``g`` from its current count to ``keep``."""
        ms = macs = 0
        for m in self.layers(g):
            now, then = self.spec(m), self.spec(m, (g, keep))
            ms += self.ms(m, now) - self.ms(m, then)
            macs += now.macs() - then.macs()
        return ms, macs


def _greedy(groups: list[_Group], est: _Estimator, step: int, done: Callable[[float, int], bool]) -> tuple[float, int]:
    """Cut ``step`` channels at a time where the most time is saved per importance lost, until ``done(ms, macs)``."""
    for g in groups:
        g.keep = g.channels
    ms, macs = est.total(), est.macs()
    while not done(ms, macs):
        best, best_score = None, -np.inf
        for g in groups:
            nxt = _next_keep(g, step)
            if nxt is None:
                continue
            saved_ms, saved_macs = est.saving(g, nxt)
            removed = g.channels - g.keep
            # the share of what the group still has: each further cut into the same group costs more
            lost = float(g.scores[removed:removed + g.keep - nxt].sum() / g.scores[removed:].sum()) + 1e-9
            # time per importance; a layer whose timing did not move (noise, below resolution) still ranks by MACs
            score = max(saved_ms, 0.0) / lost + 1e-12 * saved_macs / lost
            if score > best_score:
                best, best_score = (g, nxt, saved_ms, saved_macs), score
        if best is None:
            break  # every group at its floor
        g, nxt, saved_ms, saved_macs = best
        g.keep = nxt
        ms, macs = ms - saved_ms, macs - saved_macs
    return ms, macs


def _uniform(groups: list[_Group], est: _Estimator, step: int, macs_reduction: float) -> int:
    """Every group keeps the same fraction of its channels, rounded down to the ``step`` grid (torch-pruning's
    uniform ratio with ``round_to``): the largest fraction whose layers' MACs reach ``macs_reduction``. Sets the
    groups' counts; returns the MACs."""
    for g in groups:
        g.keep = g.channels
    dense = est.macs()

    def apply(f: float) -> int:
        for g in groups:
            g.keep = min(g.channels, max(g.floor, int(g.channels * f) // step * step))
        return est.macs()

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if dense / apply(mid) >= macs_reduction:
            lo = mid
        else:
            hi = mid
    return apply(lo)


def _dense_total(groups: list[_Group], est: _Estimator) -> float:
    """The estimate for the dense network with the current calibration; leaves the groups as they were."""
    keeps = {g: g.keep for g in groups}
    for g in groups:
        g.keep = g.channels
    total = est.total()
    for g in groups:
        g.keep = keeps[g]
    return total


def _ratios(groups: list[_Group]) -> dict[nn.Module, float]:
    # torch-pruning keeps int(channels * (1 - ratio)): half a channel of slack makes that exactly ``keep``
    return {g.root: (g.channels - g.keep - 0.5) / g.channels for g in groups if g.keep < g.channels}


def allocate(model: nn.Module, input_shape: tuple[int, ...], importance: tp.importance.Importance,
             ignored: list[nn.Module], table: LatencyTable, *, step: int, max_layer_ratio: float,
             target_macs_reduction: float | None = None, target_speedup: float | None = None,
             measure: Callable[[dict[nn.Module, float]], float] | None = None, dense_ms: float | None = None,
             max_rounds: int = 4, strict: bool = True,
             count_macs: Callable[[dict[nn.Module, float]], int] | None = None,
             profile: Callable[[dict[nn.Module, float]], list[Kernel]] | None = None) -> Allocation:
    """Channels per group for a MACs-reduction target or a measured-speedup target.

    Args:
        importance: a torch-pruning importance, ready (gradients computed if it needs them).
        table: the latency lookup table (filled as needed).
        step: channel granularity (the channel method's ``round_to``): counts stay multiples of it.
        measure: the measured latency (ms) of the model pruned with a ratio map (needed for a speedup target; with a
            MACs target it picks between the candidates). ``dense_ms`` defaults to ``measure({})``. Measurements are
            kept in the table, so a rerun with the table reproduces the allocation.
        strict: for a speedup target out of reach, raise PruningError (True) or return the fastest round (False, with
            ``report["reached"]`` False).
        count_macs: the MACs (torch-pruning's counter, which also counts BatchNorm, pooling and adds) of the model
            pruned with a ratio map: a MACs target is then met on that count, not only on the layers' sum.
        profile: the per-kernel profile (:func:`network_kernels`) of the model pruned with a ratio map. The table's
            one-layer times are then scaled, layer by layer, to what the kernels take inside the network (dense
            first, then after every measured round of a speedup target).
    """
    if (target_macs_reduction is None) == (target_speedup is None):
        raise ValueError("give exactly one of target_macs_reduction and target_speedup")
    specs = layer_specs(model, input_shape)
    groups = _groups(model, input_shape, importance, ignored, step, max_layer_ratio)
    est = _Estimator(specs, groups, table)
    arch = hashlib.sha256(json.dumps([s.key() for s in specs.values()]).encode()).hexdigest()[:16]

    def cached(kind: str, fn: Callable[[dict[nn.Module, float]], Any] | None) -> Callable[[dict], Any] | None:
        """``fn`` for the groups' current counts, from the table's file if this network was measured before."""
        if fn is None:
            return None

        def call(ratios: dict[nn.Module, float]) -> Any:
            key = f"{kind}:{arch}:" + ",".join(str(g.keep) for g in groups)
            if key not in table.networks:
                table.networks[key] = fn(ratios)
            return table.networks[key]
        return call

    measure, profile = cached("latency", measure), cached("kernels", profile)
    for g in groups:
        g.keep = g.channels
    report: dict[str, Any] = {"step": step, "groups": len(groups)}
    if profile is not None:
        report["calibrated_layers"] = est.calibrate([(tuple(x), tuple(w), ms) for x, w, ms in profile({})])
    dense_est, dense_macs = est.total(), est.macs()
    report["dense_estimated_ms"] = dense_est
    if target_macs_reduction is not None:
        aim = target_macs_reduction
        full = count_macs({}) if count_macs else None
        for _ in range(64):  # each round cuts at least one more step, so this ends at the target or the floors
            ms, macs = _greedy(groups, est, step, lambda _ms, m, a=aim: dense_macs / m >= a)
            if dense_macs / macs < aim:
                raise PruningError(f"a {target_macs_reduction}x MACs reduction is out of reach with step {step} "
                                   f"(at most {dense_macs / macs:.2f}x before every group is at its floor)",
                                   field="target_macs_reduction")
            if full is None:
                break
            reached = full / count_macs(_ratios(groups))
            report["counted_macs_reduction"] = reached
            if reached >= target_macs_reduction:
                break
            # the layers' sum misses a few per cent of the count: aim higher, at least one step past where we are
            aim = max(aim * target_macs_reduction / reached * 1.002, dense_macs / macs * 1.0001)
        if measure is not None:  # the greedy's allocation against the uniform grid at the same MACs: keep the faster
            greedy = {g: g.keep for g in groups}
            greedy_ms = measure(_ratios(groups))
            _uniform(groups, est, step, dense_macs / macs)
            uniform_ms = measure(_ratios(groups))
            # the MACs target holds on torch-pruning's count for the uniform grid too, or it is no candidate
            counted = full / count_macs(_ratios(groups)) if full else dense_macs / est.macs()
            report["candidates"] = {"greedy": {"measured_ms": greedy_ms, "macs_reduction": dense_macs / macs},
                                    "uniform": {"measured_ms": uniform_ms, "macs_reduction": dense_macs / est.macs()}}
            # only at (nearly) equal MACs: the grid's coarse steps may overshoot the target, then it is no comparison
            if (uniform_ms < greedy_ms and counted >= target_macs_reduction
                    and 1.0 <= (dense_macs / est.macs()) / (dense_macs / macs) <= 1.03):
                report["chosen"] = "uniform"
                ms, macs = est.total(), est.macs()
            else:
                report["chosen"] = "greedy"
                for g in groups:
                    g.keep = greedy[g]
    else:
        if measure is None:
            raise ValueError("a speedup target needs measure()")
        if dense_ms is None:  # measured like every candidate, and kept in the table with them
            keeps = {g: g.keep for g in groups}
            for g in groups:
                g.keep = g.channels
            dense_ms = measure({})
            for g in groups:
                g.keep = keeps[g]
        rest = dense_ms - dense_est  # what the layers' sum does not see (pooling, adds, reorders); kept constant
        goal = dense_ms / target_speedup
        aim = goal  # the latency the estimate must reach; corrected by the measurements
        rounds = []
        tried: list[tuple[float, dict[_Group, int], float, int]] = []
        for _ in range(max_rounds):
            ms, macs = _greedy(groups, est, step, lambda e, _m, a=aim, r=rest: e + r <= a)
            measured = measure(_ratios(groups))
            rounds.append({"candidate": "greedy", "aim_ms": aim, "estimated_ms": ms + rest, "measured_ms": measured,
                           "speedup": dense_ms / measured, "macs_reduction": dense_macs / macs})
            log.info("latency allocation: aim %.2f ms, estimate %.2f ms, measured %.2f ms (%.2fx)", aim, ms + rest,
                     measured, dense_ms / measured)
            tried.append((measured, {g: g.keep for g in groups}, ms, macs))
            if abs(measured - goal) <= 0.03 * goal and measured <= goal * 1.02:
                break
            if profile is not None:  # what the layers took in this network: the next round's estimate
                est.calibrate([(tuple(x), tuple(w), k) for x, w, k in profile(_ratios(groups))])
                rest = dense_ms - _dense_total(groups, est)
            aim = max(aim * goal / measured, 1e-3)
        for t in tried:
            t[1]["candidate"] = "greedy"  # type: ignore[index]
        # the uniform grid as a second candidate, its MACs target steered by its own measurements
        macs_aim = dense_macs / min(tried, key=lambda t: abs(t[0] - goal))[3]
        for _ in range(max(2, max_rounds // 2)):
            umacs = _uniform(groups, est, step, macs_aim)
            measured = measure(_ratios(groups))
            rounds.append({"candidate": "uniform", "macs_aim": macs_aim, "measured_ms": measured,
                           "speedup": dense_ms / measured, "macs_reduction": dense_macs / umacs})
            tried.append((measured, {**{g: g.keep for g in groups}, "candidate": "uniform"}, est.total(), umacs))
            if abs(measured - goal) <= 0.03 * goal and measured <= goal * 1.02:
                break
            macs_aim *= (measured / goal) ** 1.1  # latency ~ MACs on the grid; a little more to land on the safe side
        reached = [t for t in tried if t[0] <= goal * 1.02]
        if not reached and strict:
            raise PruningError(f"a {target_speedup}x measured speedup is out of reach with step {step} "
                               f"(best {max(r['speedup'] for r in rounds):.2f}x)", field="target_speedup")
        # the least pruned model that reaches the target; else the fastest one
        _, keeps, ms, macs = max(reached, key=lambda t: t[3]) if reached else min(tried, key=lambda t: t[0])
        report["reached"] = bool(reached)
        report["chosen"] = keeps["candidate"]  # type: ignore[index]
        for g in groups:
            g.keep = keeps[g]
        report.update({"dense_measured_ms": dense_ms, "rounds": rounds, "target_speedup": target_speedup})
    report.update({"estimated_ms": ms, "macs_reduction": dense_macs / macs, "table_entries": len(table.entries),
                   "table_measured": table.measured, "table_seconds": table.seconds})
    return Allocation(_ratios(groups), {g.name: (g.channels, g.keep) for g in groups}, macs, ms, dense_est, report)
