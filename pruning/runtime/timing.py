"""The one latency-timing protocol: every latency figure of the project (the evaluate stage, the latency allocation's
candidates, the benchmarks) comes from :func:`latency`.

Fixed intra-op threads; per model and batch size, ``warmup`` untimed runs then ``repeats`` timed runs; the models are
timed alternately in each of ``rounds`` rounds in one process, so machine noise hits all of them alike. A latency is
the median over rounds of each round's p50 (and p95): never a single timing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich import get_console
from rich.progress import Progress

from pruning.runtime.session import feeds, session, tiled


@dataclass(frozen=True)
class Protocol:
    """Untimed runs, timed runs per round, and rounds (the models alternate within each round)."""

    warmup: int
    repeats: int
    rounds: int


def latency(models: dict[str, str | Path | bytes], x: Any, batch_sizes: dict[str, int], threads: int,
            protocol: Protocol, levels: dict[str, str] | None = None,
            desc: str | None = "ORT latency") -> dict[str, dict[str, float]]:
    """Latency in ms of each ONNX model at each batch size.

    Args:
        models: name -> ONNX path (or serialized model).
        x: real samples to feed (tiled if a batch needs more): an array, or a model's inputs (a tensor, a tuple or a
            dict of them) for models with several.
        batch_sizes: label -> batch size, e.g. {"b1": 1, "bN": 256}.
        levels: name -> ORT graph optimisation level for that model (default "all", as shipped).
        desc: the progress bar's label; None for no bar.
    Returns:
        ``{name: {"latency_ms_<label>": p50, "latency_p95_ms_<label>": p95, ...}}``.
    """
    sessions = {name: session(path, threads, (levels or {}).get(name, "all")) for name, path in models.items()}
    batches = {label: tiled(x, bs) for label, bs in batch_sizes.items()}
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {(n, lb): [] for n in models for lb in batch_sizes}
    with Progress(disable=desc is None or not get_console().is_terminal) as progress:  # no bar in a log file
        task = progress.add_task(desc or "", total=protocol.rounds * len(models) * len(batch_sizes))
        for _ in range(protocol.rounds):
            for label, batch in batches.items():
                for name, sess in sessions.items():
                    times = _timed_runs(sess, batch, protocol)
                    samples[(name, label)].append((np.percentile(times, 50) * 1e3, np.percentile(times, 95) * 1e3))
                    progress.update(task, advance=1)
    out: dict[str, dict[str, float]] = {name: {} for name in models}
    for (name, label), rows in samples.items():
        arr = np.array(rows)
        out[name][f"latency_ms_{label}"] = float(np.median(arr[:, 0]))
        out[name][f"latency_p95_ms_{label}"] = float(np.median(arr[:, 1]))
    return out


def _timed_runs(sess: Any, batch: Any, protocol: Protocol) -> np.ndarray:
    """``protocol.warmup`` untimed runs, then the seconds of each of ``protocol.repeats`` timed runs."""
    feed, outputs = feeds(sess, batch), [sess.get_outputs()[0].name]
    for _ in range(protocol.warmup):
        sess.run(outputs, feed)
    times = np.empty(protocol.repeats)
    for i in range(protocol.repeats):
        t0 = time.perf_counter()
        sess.run(outputs, feed)
        times[i] = time.perf_counter() - t0
    return times


@dataclass(frozen=True)
class Speedup:
    """A measured speedup of a candidate over a reference, timed alternately: the median of the per-round ratios
    and a distribution-free confidence interval for it (order statistics of the rounds)."""

    median: float
    low: float
    high: float
    rounds: int
    reference_ms: float  # median over rounds of the reference's p50
    candidate_ms: float

    def as_dict(self) -> dict[str, float]:
        return {"speedup": self.median, "low": self.low, "high": self.high, "rounds": self.rounds,
                "reference_ms": self.reference_ms, "candidate_ms": self.candidate_ms}


def median_interval(values: Any, level: float = 0.9) -> tuple[float, float]:
    """A confidence interval for the median of ``values`` at ``level`` (at least; binomial order statistics, so no
    assumption on the noise's shape): with 5 values it is [min, max] (93.8 %), with 9 [2nd, 8th] (96 %)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    j, below = 0, 0.0  # largest j with P(Binomial(n, 1/2) < j) <= (1 - level) / 2
    while j < n // 2 and below + math.comb(n, j) / 2 ** n <= (1 - level) / 2:
        below += math.comb(n, j) / 2 ** n
        j += 1
    j = max(j, 1)
    return float(x[j - 1]), float(x[n - j])


def paired_speedup(reference: Any, candidate: Any, x: Any, threads: int, protocol: Protocol, *,
                   max_rounds: int = 15, max_width: float = 0.06, level: float = 0.9) -> Speedup:
    """How much faster ``candidate`` is than ``reference`` (ONNX paths, serialized models or sessions) on the batch
    ``x``, measured
    the robust way: the two are timed alternately in every round (never one reference timing reused: a noisy moment
    then hits both), the speedup is the median of the rounds' p50 ratios, and rounds are added (up to ``max_rounds``)
    while its confidence interval is wider than ``max_width`` (relative), i.e. while the machine is too noisy to tell.
    """
    sessions = [s if hasattr(s, "run") else session(s, threads) for s in (reference, candidate)]
    ref: list[float] = []
    cand: list[float] = []
    while True:
        for times, sess in zip((ref, cand), sessions, strict=True):
            times.append(float(np.percentile(_timed_runs(sess, x, protocol), 50)) * 1e3)
        if len(ref) < protocol.rounds:
            continue
        ratios = np.array(ref) / np.array(cand)
        low, high = median_interval(ratios, level)
        median = float(np.median(ratios))
        if high / low - 1 <= max_width or len(ref) >= max_rounds:
            return Speedup(median, low, high, len(ref), float(np.median(ref)), float(np.median(cand)))
