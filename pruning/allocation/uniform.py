"""Uniform allocation: every group loses the same share of its channels; the share for a MACs target by bisection."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pruning.errors import GraphTraceError

log = logging.getLogger(__name__)

MAX_SEARCH_RATIO = 0.95


def search_ratio(macs_at: Callable[[float], int], reference_macs: int, target: float, iterations: int = 12) -> float:
    """Smallest channel ratio whose pruned model reaches ``reference_macs / macs_at(ratio) >= target``.

    Args:
        macs_at: MACs of the model pruned (one-shot, on a copy) at a ratio; GraphTraceError if that ratio would empty
            a layer, which counts as "too far", so the search stays inside what can be pruned.
        reference_macs: the dense model's MACs (the target is relative to it, also after depth pruning).
        target: the MACs reduction to reach, e.g. 2.0.
    """

    def reduction(ratio: float) -> float | None:
        try:
            return reference_macs / macs_at(ratio)
        except GraphTraceError as exc:
            if ratio <= 0.0:  # not "too far": the model cannot be traced at all (say why, not "out of reach")
                raise exc
            return None

    reduction(0.0)

    lo, hi = 0.0, MAX_SEARCH_RATIO
    for _ in range(iterations):
        mid = (lo + hi) / 2
        reached = reduction(mid)
        if reached is None or reached >= target:
            hi = mid
        else:
            lo = mid
    reached = reduction(hi)
    if reached is None or reached < target:
        best = reduction(lo)
        raise GraphTraceError(
            f"{target} is out of reach (at most {best or 1.0:.2f}x, at ratio {lo:.3f}, before a layer would lose every "
            "channel; ignored layers keep their MACs)", field="target_macs_reduction")
    log.info("ratio %.4f reaches %.2fx MACs reduction (target %.2fx)", hi, reached, target)
    return hi
