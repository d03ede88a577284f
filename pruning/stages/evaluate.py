"""evaluate: dense / pruned / INT8 through ONNX Runtime -> reports/metrics.json + reports/latency.json, then the gates ->
reports/gates.json, then the MLflow record of the whole pipeline run.

The metrics are written in two files (pruning/acceptance/metrics.py): everything deterministic (accuracy, loss, MACs,
params, sizes, parity) in metrics.json, which a rerun on the same data + params reproduces byte for byte, and the
measured latencies with the speedups derived from them in latency.json. Gates, MLflow and the summary see both as one
dict.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pruning import sparse
from pruning.acceptance.gates import distrust_latency, evaluate_gates
from pruning.acceptance.metrics import VARIANTS, Latency, Metrics, ModelMetrics, choose_shipped, dump, headline, merged, spread
from pruning.checkpoint import load_model
from pruning.counting import count_macs, structural_sparsity
from pruning.data import EVAL_BATCH, at_length, has_sequence, take, tensors
from pruning.errors import ConfigError, DataError
from pruning.runtime import session as ort
from pruning.runtime.session import score, size_bytes
from pruning.runtime.timing import Protocol, latency
from pruning.stages.common import git_commit, params_hash, paths, prepared_data, read_json, stage_times, write_json
from pruning.task import build_task

if TYPE_CHECKING:
    from pruning.config import Config, PathsConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    metrics: Metrics
    latency: Latency
    gates: dict[str, Any]
    run_id: str | None = None  # the MLflow parent run, when tracking is enabled
    tracking_seconds: float = 0.0  # of which spent logging to MLflow


def _onnx(p: PathsConfig) -> dict[str, str]:
    return {"dense": p.dense_onnx, "pruned": p.pruned_onnx, "quantized": p.quantized_onnx}


def run(cfg: Config, root: str | Path = ".") -> EvaluateResult:
    """Measure the three models on the test split and check the gates. A failing gate is a verdict, not an error."""
    started = time.time()  # this stage's MLflow run spans it, logging included
    p, e = paths(cfg, root), cfg.evaluate
    data = prepared_data(cfg, root)
    onnx_paths = _onnx(p)
    for name, path in onnx_paths.items():
        if not Path(path).is_file():
            stage = "quantize" if name == "quantized" else "export"
            raise DataError(f"{path} not found: run the {stage} stage first (python -m pruning {stage})")
    dense, _ = load_model(p.dense_model, cfg.model.arch)
    pruned, record = load_model(p.finetuned_model, cfg.model.arch)
    task = build_task(cfg.task)
    counts = {"dense": count_macs(dense, data.spec), "pruned": count_macs(pruned, data.spec)}
    counts["quantized"] = counts["pruned"]
    removed = structural_sparsity(dense, pruned)
    # a masked model (unstructured, lottery): what its zeros buy, in storage only
    zeros = sparse.storage(pruned.state_dict()) if any(ed["kind"] == "mask" for ed in record["edits"]) else {}
    models = {}
    for name in VARIANTS:
        accuracy, loss = score(onnx_paths[name], data.test, e.threads, task, EVAL_BATCH)
        macs, params = counts[name]
        models[name] = ModelMetrics(metric=accuracy, accuracy=accuracy if task.metric_name == "accuracy" else None,
                                    loss=loss, macs=macs, params=params,
                                    size_bytes=size_bytes(onnx_paths[name]),
                                    structural_sparsity=0.0 if name == "dense" else removed,
                                    **(zeros if name == "pruned" else {}))
    exported = read_json(p.export_report, "export")
    metrics = Metrics.derive(models["dense"], models["pruned"], models["quantized"], exported["parity_max_abs"],
                             exported["parity_score"], task.metric_name, task.greater_is_better)
    timed_samples = take(data.test, range(min(len(data.test), e.batch_size))).x  # tiled when the split is smaller
    timed_samples, length = _at_length(timed_samples, e.sequence_length, onnx_paths["dense"])
    timings = _timed(onnx_paths, timed_samples, e)
    shipped = choose_shipped(metrics, timings, e.ship, e.int8_min_speedup, e.int8_max_metric_loss)
    log.info("shipped: %s — %s", "INT8" if shipped[0] == "quantized" else "pruned fp32", shipped[1])
    timed = Latency.derive(timings, e.batch_size, e.threads, shipped, e.max_latency_spread, length)
    verdict = evaluate_gates(merged(metrics, timed), cfg.gates)
    if not timed.latency_reliable:
        verdict = distrust_latency(verdict, f"unreliable timing: p95/p50 = {timed.latency_spread:.3g} > "
                                            f"{e.max_latency_spread:g} after {1 + _REMEASURE} measurements")
    write_json(p.metrics, dump(metrics))
    write_json(p.latency_metrics, dump(timed))
    write_json(p.gates, verdict)
    write_json(p.headline, headline(metrics, timed, verdict))
    # the previous run's id is not this run's; written before any MLflow run opens, so that an output directory that
    # cannot be written fails here, leaving no orphan run in MLflow
    write_json(p.mlflow_run, {"run_id": None, "experiment": cfg.tracking.experiment})
    start = time.perf_counter()
    example = take(data.test, range(min(4, len(data.test)))).x
    run_id = _track(cfg, root, p, (metrics, timed), verdict, example, started) if cfg.tracking.enabled else None
    tracking_seconds = time.perf_counter() - start
    write_json(p.mlflow_run, {"run_id": run_id, "experiment": cfg.tracking.experiment})
    return EvaluateResult(metrics, timed, verdict, run_id, tracking_seconds)


def _at_length(x: Any, length: int | None, dense_onnx: str) -> tuple[Any, int | None]:
    """The timed samples at ``evaluate.sequence_length`` (:func:`pruning.data.at_length`), and the length timed
    (None for a model without token inputs). ConfigError when a length is set for a model without them, or one the
    dense model cannot take (longer than its position embeddings)."""
    sequences = [t for t in tensors(x) if has_sequence(t)]
    if length is not None and not sequences:
        raise ConfigError('Invalid "evaluate.sequence_length": this model has no token input (integer, (batch, '
                          "sequence)) to time at a length: set it to null")
    if length is None:
        return x, sequences[0].shape[1] if sequences else None
    x = at_length(x, length)
    try:
        ort.run(ort.session(dense_onnx), ort.tiled(x, 1))
    except Exception as exc:  # ORT's errors (an index past the position table, an expand) come in several types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f'Invalid "evaluate.sequence_length": the dense model does not run at {length} tokens in '
                          f"ONNX Runtime (longer than its position embeddings?): {first}") from None
    return x, length


_REMEASURE = 2  # further measurements when the machine was too busy for the first


def _timed(onnx_paths: dict[str, str], samples: Any, e: Any) -> dict[str, dict[str, float]]:
    """The timing protocol's medians; measured again (at most twice) while a p95 / p50 says the machine is too busy
    for them (a loaded machine made INT8 look many times faster: docs/design.md, "Measured reasons")."""
    for attempt in range(1 + _REMEASURE):
        timings = latency(onnx_paths, samples, {"b1": 1, "bN": e.batch_size}, e.threads,
                          Protocol(e.warmup, e.repeats, e.rounds))
        if (widest := spread(timings)) <= e.max_latency_spread:
            break
        log.warning("latency p95/p50 = %.3g > %g (evaluate.max_latency_spread): the machine is busy; %s", widest,
                    e.max_latency_spread, "measuring again" if attempt < _REMEASURE else
                    "the latency figures are unreliable and no gate passes on them")
    return timings


def read_results(cfg: Config, root: str | Path = ".") -> tuple[Metrics, Latency, dict[str, Any]]:
    """metrics.json, latency.json and gates.json as the evaluate stage wrote them."""
    p = paths(cfg, root)
    return (Metrics.model_validate(read_json(p.metrics, "evaluate")),
            Latency.model_validate(read_json(p.latency_metrics, "evaluate")), read_json(p.gates, "evaluate"))


def _file_md5(path: str) -> str:
    # DVC 3 hashes a file as the md5 of its bytes, so this is the hash dvc.lock records for it.
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def track(cfg: Config, root: str | Path, store_root: str | Path, tags: dict[str, str]) -> str:
    """Log the pipeline run whose outputs lie under ``root`` (a search trial's directory) to the MLflow store of the
    workspace ``store_root``, with extra ``tags``, from the reports evaluate wrote there. Returns the parent run id."""
    p = paths(cfg, root)
    metrics, timed, verdict = read_results(cfg, root)
    data = prepared_data(cfg, root)
    example = take(data.test, range(min(4, len(data.test)))).x
    return _track(cfg, root, p, (metrics, timed), verdict, example, time.time(), store_root, tags)


def _track(cfg: Config, root: str | Path, p: PathsConfig, results: tuple[Metrics, Latency], verdict: dict[str, Any],
           example: Any, started: float, store_root: str | Path | None = None,
           extra_tags: dict[str, str] | None = None) -> str:
    """Log the whole pipeline run to MLflow from the stages' outputs (into ``store_root``'s store: by default the
    workspace ``root``'s). Returns the parent run id."""
    from pruning.acceptance.report import summary_markdown
    from pruning.stages import STAGES
    from pruning.tracking import PipelineRecord, log_pipeline, spans

    metrics, timed = results
    store_root = root if store_root is None else store_root
    tags = {**(extra_tags or {}), "git_commit": git_commit(store_root) or "unknown", "params_hash": params_hash(cfg),
            "data_md5_train": _file_md5(p.train_data), "data_md5_test": _file_md5(p.test_data),
            "shipped": "int8" if timed.shipped == "quantized" else "fp32"}
    recorded = stage_times(p.stage_times)
    since = float((recorded.get("evaluate") or {}).get("end") or 0.0)  # the previous pipeline's end
    times = {**recorded, "evaluate": {"start": started, "end": None}}  # evaluate: running now
    ran = {name: did for name, (_, _, did) in spans([s.name for s in STAGES], times, time.time(), since)[1].items()}
    record = PipelineRecord(params=cfg.model_dump(mode="json"), paths=p, metrics=merged(metrics, timed), gates=verdict,
                            tags=tags, example=example, times=times, since=since, stages=STAGES,
                            shipped=timed.shipped,
                            summary=summary_markdown(metrics, timed, verdict, None, ran) + "\n" + consumer_note(cfg, p))
    return log_pipeline(record, cfg.tracking.experiment, store_root)


def consumer_note(cfg: Config, p: PathsConfig) -> str:
    """What a consumer of the shipped ONNX model needs to feed it: its inputs, the preprocessing, the classes."""
    import json

    import onnx

    from pruning.data import preprocessing

    meta = json.loads(Path(p.data_meta).read_text())
    graph = onnx.load(p.pruned_onnx, load_external_data=False).graph
    inputs = ", ".join(f"`{i.name}` {[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]}"
                       for i in graph.input)
    lines = ["## Using the model", "", f"- inputs: {inputs} (float32; the batch dimension is dynamic)",
             f"- preprocessing (not in the model): {preprocessing(cfg.data)}; sample shape {meta.get('input_shape')}"]
    if meta.get("num_classes"):
        names = meta.get("class_names") or meta.get("classes")
        lines.append(f"- outputs: scores of {meta['num_classes']} classes"
                     + (f" ({', '.join(map(str, names))})" if names else " (index = class id)"))
    return "\n".join(lines) + "\n"
