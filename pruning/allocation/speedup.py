"""The speedup target's search: a position on the greedy path, bracketed and bisected on the measured speedup.

The greedy path (:class:`pruning.allocation.latency.GreedyPath`) orders every cut once, by the calibrated estimate;
its position is one scalar along which the estimated time falls monotonically. The search measures candidates on it
— each one timed alternately with the dense network, the speedup a median of per-round ratios with a confidence
interval (:func:`pruning.runtime.timing.paired_speedup`) — and keeps a bracket: ``lo``, the most-pruned position known
to fall short, ``hi``, the least-pruned known to reach the target (the interval's lower bound at least
:data:`MARGIN` x the target).
The next position is where the estimate, corrected by the measurements at both ends, predicts the target (a
safeguarded secant: it always moves at least an eighth of the bracket inside it), so the search converges whatever
the estimate's error. It stops at a position inside [target, 1.11 x target] (median; the bound reported is
1.15 x target), or when ``hi`` and ``lo`` are
neighbours (the step is too coarse to land inside: the closest position above the target), or after
``max_measurements``. A single timing never decides: a candidate that only looks fast in a noisy moment has a wide
interval, gets more rounds, and is accepted on its lower bound.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from pruning.errors import PruningError
from pruning.runtime.timing import Speedup

log = logging.getLogger(__name__)

OVERSHOOT = 1.15  # a result's measured speedup within [target, OVERSHOOT x target]
AIM = 1.07  # where inside that band the next candidate aims
# the search stops at a candidate measured at most SETTLE x target, and prefers it to one nearer the bound: a later
# measurement under other conditions moves a few per cent either way, and the band's middle keeps it inside
SETTLE = 1.11
# a candidate is accepted when its interval's lower bound is at least MARGIN x target: the search's pairs and any later
# measurement (evaluate's three models, a benchmark's ten) run under different cache and load conditions, a few
# per cent apart (docs/design.md, "Measured reasons")
MARGIN = 1.03


def search(path: Any, measure: Callable[[dict[Any, float]], Speedup], target: float, strict: bool,
           max_measurements: int, report: dict[str, Any], ratios: Callable[[list[Any]], dict[Any, float]],
           uniform: Callable[[float], int] | None = None) -> None:
    """Set ``path``'s (a :class:`pruning.allocation.latency.GreedyPath`) groups to the chosen position; records every
    measured candidate in ``report["rounds"]``. ``ratios``: the ratio map of the groups' current counts;
    ``uniform(MACs reduction)``: sets every group to the uniform grid at that reduction (a second candidate family,
    searched the same way; the least pruned accepted candidate wins)."""
    dense_est = path.ms[0]
    measured: dict[int, Speedup] = {}
    rounds: list[dict[str, Any]] = []

    def est_speedup(k: int) -> float:
        return dense_est / max(path.ms[k], 1e-12)

    def position(aim: float, after: int) -> int | None:
        """The first position past ``after`` whose estimated speedup reaches ``aim`` (growing the path)."""
        path.grow(lambda ms, _m: dense_est / max(ms, 1e-12) >= aim)
        for k in range(after + 1, len(path.cuts) + 1):
            if est_speedup(k) >= aim:
                return k
        return len(path.cuts) if len(path.cuts) > after else None

    def run(k: int) -> Speedup:
        path.go(k)
        sp = measure(ratios(path.groups))
        measured[k] = sp
        rounds.append({"candidate": "greedy", "cuts": k, "estimated_speedup": est_speedup(k),
                       "macs_reduction": path.macs[0] / path.macs[k],
                       **sp.as_dict()})
        log.info("latency allocation: %d cuts, estimate %.2fx, measured %.2fx [%.2f, %.2f] (%d rounds, %.2fx MACs)",
                 k, est_speedup(k), sp.median, sp.low, sp.high, sp.rounds, path.macs[0] / path.macs[k])
        return sp

    lo, hi = 0, None  # positions: known short of the target, known to reach it
    k = position(target * AIM, 0)
    while k is not None and len(measured) < max_measurements:
        sp = run(k)
        if sp.low >= MARGIN * target:
            hi = k
            if sp.median <= SETTLE * target:
                break
        else:
            lo = k
        if hi is None:  # not yet reached: aim past the estimate by what this measurement missed by
            ask = est_speedup(k) * max(target * AIM / max(sp.median, 1e-9), 1.05)
            k = position(ask, k)
            continue
        if hi - lo <= 1:
            break
        k = _between(lo, hi, measured, est_speedup, target * AIM)
    if "calibration" in report and measured:
        dense_ms = sorted(sp.reference_ms for sp in measured.values())[len(measured) // 2]
        report["calibration"].update({"dense_measured_ms": dense_ms, "search_error": dense_est / dense_ms - 1})
    found: list[tuple[str, float, Speedup, dict[Any, int]]] = []  # (candidate, MACs reduction, speedup, counts)
    if hi is not None:
        path.go(hi)
        found.append(("greedy", path.macs[0] / path.macs[hi], measured[hi], {g: g.keep for g in path.groups}))
        if hi - lo == 1 and measured[hi].median > SETTLE * target:
            found += _partial_cut(path, lo, measure, ratios, target, rounds, max_measurements - len(measured))
    if uniform is not None:  # the uniform grid, its MACs reduction bisected the same way
        start = found[0][1] if found else path.macs[0] / path.macs[max(measured, default=0)]
        found += _uniform_search(path, uniform, measure, ratios, target, start, rounds)
    report.update({"rounds": rounds, "target_speedup": target, "overshoot_bound": [target, OVERSHOOT * target],
                   "bracket": [lo, hi]})
    if not found:
        best = max(measured, key=lambda j: measured[j].median, default=0)
        report.update({"reached": False, "chosen": "greedy", "cuts": best})
        if strict:
            top = max((r["speedup"] for r in rounds), default=1.0)
            raise PruningError(f"a {target}x measured speedup is out of reach with step {path.step} "
                               f"(best {top:.2f}x after {len(rounds)} candidates)", field="target_speedup")
        path.go(best)
        return
    # the band's middle first, then inside the overshoot bound, then the least pruned (at the same speedup: the most
    # efficient)
    name, _, sp, keeps = min(found, key=lambda f: (f[2].median > SETTLE * target, f[2].median > OVERSHOOT * target,
                                                   f[1]))
    for g, keep in keeps.items():
        g.keep = keep
    report.update({"reached": True, "chosen": name, "cuts": hi if name == "greedy" else None, "speedup": sp.as_dict(),
                   "within_overshoot_bound": sp.median <= OVERSHOOT * target})


def _partial_cut(path: Any, lo: int, measure: Callable[[dict[Any, float]], Speedup],
                 ratios: Callable[[list[Any]], dict[Any, float]], target: float, rounds: list[dict[str, Any]],
                 budget: int) -> list[tuple[str, float, Speedup, dict[Any, int]]]:
    """The cut from ``lo`` to the next position removes several steps of one group and jumps over the band: its
    intermediate counts, least pruned first, until one is accepted (the closest above the target)."""
    path.go(lo)
    g, keep = path.cuts[lo]
    before = g.keep
    out: list[tuple[str, float, Speedup, dict[Any, int]]] = []
    try:
        for mid in range(before - g.step, keep, -g.step)[:max(budget, 0)]:
            g.keep = mid
            sp = measure(ratios(path.groups))
            macs = path.macs[0] / path.est.macs()
            rounds.append({"candidate": "greedy, partial cut", "cuts": lo, "group": g.name, "keep": mid,
                           "macs_reduction": macs, **sp.as_dict()})
            log.info("latency allocation: %d cuts and %s at %d channels, measured %.2fx [%.2f, %.2f]", lo, g.name, mid,
                     sp.median, sp.low, sp.high)
            if sp.low >= MARGIN * target:
                out.append(("greedy, partial cut", macs, sp, {h: h.keep for h in path.groups}))
                if sp.median <= SETTLE * target:
                    break
    finally:
        g.keep = before  # the path's own position again
    return out


def _uniform_search(path: Any, uniform: Callable[[float], int], measure: Callable[[dict[Any, float]], Speedup],
                    ratios: Callable[[list[Any]], dict[Any, float]], target: float, start: float,
                    rounds: list[dict[str, Any]], budget: int = 5) -> list[tuple[str, float, Speedup, dict[Any, int]]]:
    """Every group at the same fraction of its channels (``uniform(MACs reduction)`` sets them), that MACs
    reduction bracketed on the measured speedup (log-log secant): the accepted candidate, or none."""
    lo = (1.0, 1.0)  # (MACs reduction, measured speedup): the dense network
    hi: tuple[float, Speedup, dict[Any, int]] | None = None
    r, seen = max(start, 1.0 + 1e-6), set()
    for _ in range(budget):
        macs = uniform(r)
        actual = path.macs[0] / macs
        if actual in seen:  # the grid gives nothing new here
            break
        seen.add(actual)
        sp = measure(ratios(path.groups))
        rounds.append({"candidate": "uniform", "macs_reduction": actual, **sp.as_dict()})
        log.info("latency allocation, uniform grid: %.2fx MACs, measured %.2fx [%.2f, %.2f]", actual, sp.median,
                 sp.low, sp.high)
        if sp.low >= MARGIN * target:
            hi = (actual, sp, {g: g.keep for g in path.groups})
            if sp.median <= SETTLE * target:
                break
        else:
            lo = (actual, sp.median)
        if hi is None:  # latency ~ MACs on the grid: scale by what this one missed, a little past
            r = actual * (target * AIM / max(sp.median, 1e-9)) ** 1.1
            continue
        (r0, s0), (r1, s1) = lo, (hi[0], hi[1].median)
        if r1 / r0 < 1.01:
            break
        t = (math.log(target * AIM) - math.log(s0)) / max(math.log(s1) - math.log(s0), 1e-9)
        r = math.exp(math.log(r0) + min(max(t, 0.15), 0.85) * (math.log(r1) - math.log(r0)))
    return [("uniform", hi[0], hi[1], hi[2])] if hi else []


def _between(lo: int, hi: int, measured: dict[int, Speedup], est_speedup: Callable[[int], float], aim: float) -> int:
    """The position in (lo, hi) where the estimate, corrected by the measured/estimated ratio interpolated between
    the bracket's ends, reaches ``aim``; at least an eighth of the bracket from either end (so it shrinks)."""
    def corr(k: int) -> float:  # log(measured / estimated) at a measured position (the dense one is exact)
        return 0.0 if k == 0 else math.log(measured[k].median / est_speedup(k))

    c_lo, c_hi = corr(lo), corr(hi)
    guard = max(1, (hi - lo) // 8)
    best = (lo + hi) // 2
    for k in range(lo + guard, hi - guard + 1):
        c = c_lo + (c_hi - c_lo) * (k - lo) / (hi - lo)
        if math.log(est_speedup(k)) + c >= math.log(aim):
            best = k
            break
    else:
        best = hi - guard
    return min(max(best, lo + guard), hi - guard) if hi - lo > 2 else lo + 1
