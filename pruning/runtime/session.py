"""ONNX Runtime sessions with the options every measurement uses, predictions, accuracy, size on disk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def session_options(threads: int = 1, level: str = "all"):
    """The session options every measurement uses: fixed intra-op threads, sequential, optimisation ``level``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    opts.log_severity_level = 3
    return opts


def session(path: str | Path | bytes, threads: int = 1, level: str = "all"):
    """An ONNX Runtime CPU session with fixed intra-op threads and graph optimisation ``level`` (default: all).

    ``path`` may also be a serialized model. ``level``: "disable", "basic", "extended" or "all" (ORT's levels; "all"
    adds the layout optimisations, e.g. NCHWc convolutions).
    """
    import onnxruntime as ort

    opts = session_options(threads, level)
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def predict(sess, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits for ``x`` from an ORT session, in batches."""
    outs = [sess.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


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
