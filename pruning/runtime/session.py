"""ONNX Runtime sessions with the options every measurement uses, feeds for every input, predictions, the task's
metric over a split, size on disk."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pruning.data import batches, tensors
from pruning.errors import ModelError
from pruning.task import CLASSIFICATION, Task, mean_scores

INPUT_NAME = "input"  # a single-input model's input; a model with several keeps its own names (export.py)
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
    opts.log_severity_level = 4  # fatal only: a failing run raises its error in Python, where it is reported once
    return opts


def check_model_file(path: str | Path) -> None:
    """Refuse, in one line (:class:`~pruning.errors.ModelError` naming the file and the tensor), an ONNX file that is
    not one, or one with a tensor whose external data lies outside the file's directory once symbolic links are
    followed (``../secret.bin``, or a link out), or is missing. Every model file a stage opens goes through it (ORT
    sessions, quantization) before ONNX or ONNX Runtime reads it: they refuse such data too, but as a traceback."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, an OSError: the file is not a model
        raise ModelError(f"{path} is not an ONNX model ({type(exc).__name__}): rerun the stage that wrote it") from None
    base = path.absolute().parent.resolve()
    for tensor in _tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        try:
            real = (base / location).resolve()
        except (OSError, RuntimeError):  # a loop of links
            real = None
        if real is None or not real.is_relative_to(base):
            raise ModelError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, outside the model's "
                             "directory: refused (rerun the stage that wrote it)")
        if not real.is_file():
            raise ModelError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, which is not a file "
                             "beside it (rerun the stage that wrote it)")


def _tensors(graph: Any) -> Iterable[Any]:
    """Every tensor of an ONNX graph: initializers (sparse ones' values and indices) and node attributes, subgraphs
    (If / Loop / Scan bodies) included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def session(path: str | Path | bytes, threads: int = 1, level: str = "all"):
    """An ONNX Runtime CPU session with fixed intra-op threads and graph optimisation ``level`` (default: all).

    ``path`` may also be a serialized model; a file is checked first (:func:`check_model_file`). ``level``:
    "disable", "basic", "extended" or "all" (ORT's levels; "all" adds the layout optimisations, e.g. NCHWc
    convolutions).
    """
    import onnxruntime as ort

    opts = session_options(threads, level)
    if not isinstance(path, bytes):
        check_model_file(path)
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def feeds(sess, x: Any) -> dict[str, np.ndarray]:
    """ORT's input dict for ``x``: one array, a tuple of inputs (in the session's input order) or a dict by name;
    torch tensors or numpy arrays."""
    return feeds_for([i.name for i in sess.get_inputs()], x)


def feeds_for(names: list[str], x: Any) -> dict[str, np.ndarray]:
    """ORT's input dict for ``x`` given the model's input ``names`` (in order)."""
    def arr(t: Any) -> np.ndarray:
        return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)

    if isinstance(x, dict):
        return {k: arr(v) for k, v in x.items()}
    parts = [x] if isinstance(x, torch.Tensor | np.ndarray) else list(x)
    if len(parts) != len(names):
        raise ValueError(f"the ONNX model takes {len(names)} inputs ({', '.join(names)}), got {len(parts)}")
    return {n: arr(t) for n, t in zip(names, parts, strict=True)}


def run(sess, x: Any) -> np.ndarray:
    """The (first) output of ``sess`` for one batch ``x``."""
    return sess.run([sess.get_outputs()[0].name], feeds(sess, x))[0]


def predict(sess, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Outputs for the samples ``x`` of a single-input model, in batches."""
    return np.concatenate([run(sess, x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def score(onnx_path: str | Path, split: Iterable[Any] | Any, threads: int, task: Task = CLASSIFICATION,
          batch_size: int = 256) -> tuple[float, float]:
    """The task's metric and mean loss of an ONNX model over a split (a Dataset, read in batches: streamed sources
    stream), computed by the same functions as for torch models."""
    sess = session(onnx_path, threads)
    return mean_scores(task, ((torch.from_numpy(run(sess, b.x)), b.y) for b in batches(split, batch_size)))


def tiled(x: Any, n: int) -> Any:
    """A batch of exactly ``n`` samples made from the samples of ``x`` (repeated as needed), as numpy arrays."""
    def tile(t: Any) -> np.ndarray:
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        return np.ascontiguousarray(np.resize(a, (n, *a.shape[1:])))

    if isinstance(x, dict):
        return {k: tile(v) for k, v in x.items()}
    if isinstance(x, torch.Tensor | np.ndarray):
        return tile(x)
    return tuple(tile(t) for t in tensors(x))


def size_bytes(path: str | Path) -> int:
    """Size on disk (an ONNX file here is always a single file: no external data)."""
    return os.path.getsize(path)
