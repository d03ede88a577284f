"""The one latency-timing protocol: every latency figure of the project (the evaluate stage, the latency allocation's
candidates, the benchmarks) comes from :func:`latency`.

Fixed intra-op threads; per model and batch size, ``warmup`` untimed runs then ``repeats`` timed runs; the models are
timed alternately in each of ``rounds`` rounds in one process, so machine noise hits all of them alike. A latency is
the median over rounds of each round's p50 (and p95): never a single timing.
"""

from __future__ import annotations

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
                    feed, outputs = feeds(sess, batch), [sess.get_outputs()[0].name]
                    for _ in range(protocol.warmup):
                        sess.run(outputs, feed)
                    times = np.empty(protocol.repeats)
                    for i in range(protocol.repeats):
                        t0 = time.perf_counter()
                        sess.run(outputs, feed)
                        times[i] = time.perf_counter() - t0
                    samples[(name, label)].append((np.percentile(times, 50) * 1e3, np.percentile(times, 95) * 1e3))
                    progress.update(task, advance=1)
    out: dict[str, dict[str, float]] = {name: {} for name in models}
    for (name, label), rows in samples.items():
        arr = np.array(rows)
        out[name][f"latency_ms_{label}"] = float(np.median(arr[:, 0]))
        out[name][f"latency_p95_ms_{label}"] = float(np.median(arr[:, 1]))
    return out
