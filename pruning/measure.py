"""Measurements through ONNX Runtime: accuracy, loss and latency (p50/p95), plus size on disk.

Latency protocol: fixed intra-op threads, warm-up runs, then ``repeats`` timed runs per model and batch size; the
models are timed alternately for ``rounds`` rounds in one process, so machine noise hits all of them alike. Reported
p50/p95 are the medians over rounds of each round's p50/p95.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

from pruning.export import INPUT_NAME, OUTPUT_NAME, predict, session


def accuracy_and_loss(onnx_path: str | Path, x: np.ndarray, y: np.ndarray, threads: int) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of an ONNX model on (x, y)."""
    logits = predict(session(onnx_path, threads), x).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(y)), y].mean())
    return float((logits.argmax(1) == y).mean()), loss


def size_bytes(path: str | Path) -> int:
    """Size on disk (an ONNX file here is always a single file: no external data)."""
    return os.path.getsize(path)


def latency(models: dict[str, str | Path], x: np.ndarray, batch_sizes: dict[str, int], threads: int, warmup: int,
            repeats: int, rounds: int, levels: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    """Latency in ms of each ONNX model at each batch size.

    Args:
        models: name -> ONNX path.
        x: real samples to feed (tiled if a batch needs more).
        batch_sizes: label -> batch size, e.g. {"b1": 1, "bN": 256}.
        levels: name -> ORT graph optimisation level for that model (default "all", as shipped).
    Returns:
        ``{name: {"latency_ms_<label>": p50, "latency_p95_ms_<label>": p95, ...}}``.
    """
    sessions = {name: session(path, threads, (levels or {}).get(name, "all")) for name, path in models.items()}
    batches = {label: np.ascontiguousarray(np.resize(x, (bs, *x.shape[1:]))) for label, bs in batch_sizes.items()}
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {(n, lb): [] for n in models for lb in batch_sizes}
    with Progress() as progress:
        task = progress.add_task("ORT latency", total=rounds * len(models) * len(batch_sizes))
        for _ in range(rounds):
            for label, batch in batches.items():
                for name, sess in sessions.items():
                    feed = {INPUT_NAME: batch}
                    for _ in range(warmup):
                        sess.run([OUTPUT_NAME], feed)
                    times = np.empty(repeats)
                    for i in range(repeats):
                        t0 = time.perf_counter()
                        sess.run([OUTPUT_NAME], feed)
                        times[i] = time.perf_counter() - t0
                    samples[(name, label)].append((np.percentile(times, 50) * 1e3, np.percentile(times, 95) * 1e3))
                    progress.update(task, advance=1)
    out: dict[str, dict[str, float]] = {name: {} for name in models}
    for (name, label), rows in samples.items():
        arr = np.array(rows)
        out[name][f"latency_ms_{label}"] = float(np.median(arr[:, 0]))
        out[name][f"latency_p95_ms_{label}"] = float(np.median(arr[:, 1]))
    return out
