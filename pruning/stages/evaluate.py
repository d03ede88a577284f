"""evaluate: dense / pruned / INT8 through ONNX Runtime -> reports/metrics.json + reports/latency.json, then the gates ->
reports/gates.json.

The metrics are written in two files: everything deterministic (accuracy, loss, MACs, params, sizes, parity) in
metrics.json, which a rerun on the same data + params reproduces byte for byte, and the measured latencies with the
speedups derived from them in latency.json. Gates, MLflow and the summary see both as one dict (``read_metrics``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pruning.config import Config
from pruning.errors import DataError
from pruning.gates import evaluate_gates
from pruning.measure import accuracy_and_loss, latency, size_bytes
from pruning.stages.common import git_commit, load_data, params_hash, read_json, write_json
from pruning.surgery import count_macs, load_model, structural_sparsity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict[str, Any]
    gates: dict[str, Any]
    run_id: str | None = None  # the MLflow parent run, when tracking is enabled
    tracking_seconds: float = 0.0  # of which spent logging to MLflow


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def run_evaluate(cfg: Config) -> EvaluateResult:
    """Measure the three models on the test split and check the gates. A failing gate is a verdict, not an error."""
    data = load_data(cfg)
    e = cfg.evaluate
    onnx_paths = {"dense": cfg.paths.dense_onnx, "pruned": cfg.paths.pruned_onnx,
                  "quantized": cfg.paths.quantized_onnx}
    for name, path in onnx_paths.items():
        if not Path(path).is_file():
            stage = "quantize" if name == "quantized" else "export"
            raise DataError(f"{path} not found: run the {stage} stage first (python -m pruning {stage})")
    dense, _ = load_model(cfg.paths.dense_model)
    pruned, _ = load_model(cfg.paths.finetuned_model)
    dense_macs, dense_params = count_macs(dense, data.input_shape)
    pruned_macs, pruned_params = count_macs(pruned, data.input_shape)
    sparsity = structural_sparsity(dense, pruned)
    x_test, y_test = data.test.x.numpy(), data.test.y.numpy()
    timings = latency(onnx_paths, x_test, {"b1": 1, "bN": e.batch_size}, e.threads, e.warmup, e.repeats, e.rounds)
    measured: dict[str, Any] = {}  # deterministic: metrics.json
    for name, path in onnx_paths.items():
        accuracy, loss = accuracy_and_loss(path, x_test, y_test, e.threads)
        macs, params = (dense_macs, dense_params) if name == "dense" else (pruned_macs, pruned_params)
        measured[name] = {"accuracy": accuracy, "loss": loss, "macs": macs, "params": params,
                          "size_bytes": size_bytes(path), "structural_sparsity": 0.0 if name == "dense" else sparsity}
    d, p, q = measured["dense"], measured["pruned"], measured["quantized"]
    measured.update({
        "macs_reduction": _ratio(d["macs"], p["macs"]),
        "params_reduction": _ratio(d["params"], p["params"]),
        "size_reduction": _ratio(d["size_bytes"], q["size_bytes"]),
        "accuracy_drop": d["accuracy"] - p["accuracy"],
        "quantized_accuracy_drop": d["accuracy"] - q["accuracy"],
        "parity_max_abs": read_json(cfg.paths.export_report, "export")["parity_max_abs"],
    })
    d, p, q = timings["dense"], timings["pruned"], timings["quantized"]
    # measured latencies, the speedups derived from them and how they were measured: latency.json
    timed: dict[str, Any] = {
        **timings,
        "speedup_b1": _ratio(d["latency_ms_b1"], p["latency_ms_b1"]),
        "speedup_bN": _ratio(d["latency_ms_bN"], p["latency_ms_bN"]),
        "quantized_speedup_b1": _ratio(d["latency_ms_b1"], q["latency_ms_b1"]),
        "quantized_speedup_bN": _ratio(d["latency_ms_bN"], q["latency_ms_bN"]),
        # INT8's own factor, on top of pruning: pruned fp32 / pruned INT8
        "int8_speedup_b1": _ratio(p["latency_ms_b1"], q["latency_ms_b1"]),
        "int8_speedup_bN": _ratio(p["latency_ms_bN"], q["latency_ms_bN"]),
        "batch_size_N": e.batch_size,
        "threads": e.threads,
    }
    metrics = _merge(measured, timed)
    verdict = evaluate_gates(metrics, cfg.gates)
    start = time.perf_counter()
    run_id = _track(cfg, metrics, verdict, x_test[:4]) if cfg.tracking.enabled else None
    tracking_seconds = time.perf_counter() - start
    write_json(cfg.paths.metrics, measured)
    write_json(cfg.paths.latency_metrics, timed)
    write_json(cfg.paths.gates, verdict)
    write_json(cfg.paths.mlflow_run, {"run_id": run_id, "experiment": cfg.tracking.experiment})
    return EvaluateResult(metrics, verdict, run_id, tracking_seconds)


def _merge(measured: dict[str, Any], timed: dict[str, Any]) -> dict[str, Any]:
    """The two halves as one dict: per-model entries joined, top-level keys side by side."""
    return {**measured, **timed, **{k: {**measured[k], **v} for k, v in timed.items() if isinstance(v, dict)}}


def read_metrics(cfg: Config) -> dict[str, Any]:
    """metrics.json and latency.json merged back into the one dict the evaluate stage measured."""
    return _merge(read_json(cfg.paths.metrics, "evaluate"), read_json(cfg.paths.latency_metrics, "evaluate"))


def _file_md5(path: str) -> str:
    # DVC 3 hashes a file as the md5 of its bytes, so this is the hash dvc.lock records for it.
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _track(cfg: Config, metrics: dict[str, Any], verdict: dict[str, Any], example: Any) -> str:
    """Log the whole pipeline run to MLflow from the stages' reports. Returns the parent run id."""
    from pruning.tracking import PipelineRecord, log_pipeline

    p = cfg.paths
    reports = {"prepare": read_json(p.data_meta, "prepare"), "train": read_json(p.train_report, "train"),
               "prune": read_json(p.prune_report, "prune"), "prune_steps": read_json(p.prune_steps, "prune"),
               "finetune": read_json(p.finetune_report, "finetune"), "export": read_json(p.export_report, "export"),
               "quantize": read_json(p.quantize_report, "quantize")}
    tags = {"git_commit": git_commit() or "unknown", "params_hash": params_hash(cfg),
            "data_md5_train": _file_md5(p.train_data), "data_md5_test": _file_md5(p.test_data)}
    record = PipelineRecord(params=cfg.model_dump(mode="json"), reports=reports, metrics=metrics, gates=verdict,
                            tags=tags, pruned_onnx=p.pruned_onnx, quantized_onnx=p.quantized_onnx, example=example,
                            latency_table=p.latency_table)
    return log_pipeline(record, cfg.tracking.experiment)
