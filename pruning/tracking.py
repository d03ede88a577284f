"""MLflow: the only module that imports mlflow. Runs, metrics, artifacts, models, registry and aliases.

One pipeline run = one parent run (all params flattened, final metrics under the names of reports/metrics.json,
gates.json, the per-layer channel table, the accuracy-vs-MACs plot, the pruned fp32 and INT8 ONNX models with
signature and input example) + one nested run per stage with that stage's curves and figures. The stages' reports are
the record, so a parent run is complete even when DVC reused some stages from its cache (their nested runs then
carry the cached figures).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pruning.config import Config

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACT_DIR = "mlartifacts"
INT8_MODEL_TAG = "int8_model_uri"
STAGES = ("prepare", "train", "prune", "finetune", "export", "quantize", "evaluate")


@dataclass(frozen=True)
class PipelineRecord:
    """What the stages left behind, as plain data: reports by stage name, file paths, and test samples."""

    params: dict[str, Any]
    reports: dict[str, Any]
    metrics: dict[str, Any]
    gates: dict[str, Any]
    tags: dict[str, str]
    pruned_onnx: str
    quantized_onnx: str
    example: np.ndarray
    latency_table: str | None = None  # prune.allocation latency: the per-layer table, logged with the prune run


def setup(experiment: str) -> str:
    """Point mlflow at MLFLOW_TRACKING_URI (default sqlite:///mlflow.db) and the experiment; returns its id.

    With the default store the experiment's artifacts go to ./mlartifacts (git-ignored), as with ``mlflow server``.
    """
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        location = Path(ARTIFACT_DIR).absolute().as_uri() if uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    else:
        experiment_id = found.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)  # nested runs inherit the active experiment
    return experiment_id


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay whole."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _numbers(tree: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in flatten(tree).items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _series(run_id: str, rows: list[dict[str, Any]], step_key: str) -> None:
    """Log a list of records as metric curves, one point per record at step ``row[step_key]``."""
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    points = [Metric(k, float(v), now, int(row[step_key])) for row in rows for k, v in row.items()
              if k != step_key and isinstance(v, int | float) and not isinstance(v, bool)]
    for i in range(0, len(points), 900):  # the REST API takes at most 1000 entities per batch
        mlflow.MlflowClient().log_batch(run_id, metrics=points[i:i + 900])


@contextmanager
def _nested(name: str) -> Iterator[str]:
    import mlflow

    with mlflow.start_run(run_name=name, nested=True) as run:
        mlflow.set_tag("stage", name)
        yield run.info.run_id


def _accuracy_vs_macs_figure(steps: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    macs = [s["macs"] / 1e6 for s in steps]
    ax.plot(macs, [s["accuracy"] for s in steps], "o-")
    for s, m in zip(steps, macs, strict=True):
        ax.annotate(f"step {s['step']}", (m, s["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs MACs over the pruning steps")
    ax.invert_xaxis()
    fig.tight_layout()
    return fig


def _log_onnx(path: str, name: str, example: np.ndarray):
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    from pruning.export import predict, session

    output = predict(session(path), example)
    # An ONNX model needs onnx + onnxruntime and nothing else to be served: say so, instead of letting MLflow infer
    # requirements by importing the model in a subprocess (1.7 s per model, most of the MLflow time of a run).
    return mlflow.onnx.log_model(onnx.load(path), name=name, signature=infer_signature(example, output),
                                 input_example=example, onnx_execution_providers=["CPUExecutionProvider"],
                                 save_as_external_data=False,
                                 pip_requirements=mlflow.onnx.get_default_pip_requirements())


def warm_up(experiment: str) -> None:
    """Open the store and import what logging a run needs, ahead of time (the flow does it while Prefect starts)."""
    import matplotlib

    matplotlib.use("Agg")  # as _accuracy_vs_macs_figure does: no display here
    import matplotlib.pyplot  # noqa: F401
    import mlflow.onnx  # noqa: F401

    setup(experiment)


def log_pipeline(record: PipelineRecord, experiment: str) -> str:
    """Log one pipeline run (parent + a nested run per stage). Returns the parent run id."""
    import mlflow

    experiment_id = setup(experiment)
    r = record.reports
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"pipeline-{record.tags['params_hash'][:8]}") as parent:
        mlflow.set_tags({**record.tags, "gates": "passed" if record.gates["passed"] else "failed"})
        params = flatten(record.params)
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        mlflow.log_metrics(_numbers(record.metrics))
        mlflow.log_dict(record.metrics, "metrics.json")
        mlflow.log_dict(record.gates, "gates.json")
        _log_csv(r["prune"]["layers"], "prune_layers.csv")
        mlflow.log_figure(_accuracy_vs_macs_figure(r["prune_steps"]), "accuracy_vs_macs.png")

        with _nested("prepare"):
            mlflow.log_params({k: v for k, v in r["prepare"].items() if not isinstance(v, list | dict)})
            mlflow.log_param("input_shape", r["prepare"]["input_shape"])
        with _nested("train") as run_id:
            mlflow.log_params({f"train.{k}": v for k, v in record.params["train"].items()})
            _series(run_id, r["train"]["epochs"], "epoch")
            mlflow.log_metrics(_numbers(r["train"]))
        with _nested("prune") as run_id:
            mlflow.log_params({f"prune.{k}": str(v) for k, v in record.params["prune"].items()})
            _series(run_id, r["prune_steps"], "step")
            mlflow.log_metrics(_numbers(r["prune"]))
            if r["prune"].get("allocation") == "latency" and record.latency_table:
                mlflow.log_artifact(record.latency_table)  # the per-layer ORT table the allocation used
        with _nested("finetune") as run_id:
            mlflow.log_params({k: str(v) for k, v in flatten(record.params["finetune"], "finetune.").items()})
            _series(run_id, r["finetune"]["epochs"], "epoch")
            mlflow.log_metrics(_numbers({k: v for k, v in r["finetune"].items() if k != "epochs"}))
        with _nested("export"):
            mlflow.log_params({f"export.{k}": v for k, v in record.params["export"].items()})
            mlflow.log_metrics(_numbers(r["export"]))
            fp32 = _log_onnx(record.pruned_onnx, "pruned_fp32", record.example)
        with _nested("quantize"):
            mlflow.log_params({f"quantize.{k}": v for k, v in record.params["quantize"].items()})
            int8 = _log_onnx(record.quantized_onnx, "int8", record.example)
            mlflow.log_metric("size_bytes", record.metrics["quantized"]["size_bytes"])
        with _nested("evaluate"):
            mlflow.log_params({f"evaluate.{k}": v for k, v in record.params["evaluate"].items()})
            mlflow.log_metrics(_numbers(record.metrics))
            mlflow.log_dict(record.gates, "gates.json")
        mlflow.set_tags({INT8_MODEL_TAG: int8.model_uri, "pruned_fp32_model_uri": fp32.model_uri})
        return parent.info.run_id


def _log_csv(rows: list[dict[str, Any]], name: str) -> None:
    import mlflow

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    mlflow.log_text(buf.getvalue(), name)


def log_bench(experiment: str, result: dict[str, Any], artifacts: list[Path]) -> str:
    """One parent run per benchmark, one nested run per pruning run (params: method, regime, target, seed)."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    experiment_id = setup(experiment)
    client = mlflow.MlflowClient()
    name = "bench-criteria" + ("-quick" if result["quick"] else "")
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as parent:
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(result["config"]).items()})
        mlflow.log_dict(result["summary"], "summary.json")
        for path in artifacts:
            mlflow.log_artifact(str(path))
        now = int(time.time() * 1000)
        for rec in result["records"]:
            run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent.info.run_id},
                                    run_name=f"{rec['method']}-{rec['regime']}-{rec['target']:g}x-s{rec['seed']}")
            client.log_batch(run.info.run_id,
                             metrics=[Metric(k, float(rec[k]), now, 0) for k in ("accuracy", "loss", "achieved", "ratio")],
                             params=[Param(k, str(rec[k])) for k in ("method", "regime", "target", "seed")],
                             tags=[RunTag("bench", "criteria")])
            client.set_terminated(run.info.run_id)
        return parent.info.run_id


def log_report(experiment: str, name: str, params: dict[str, Any], report: dict[str, Any], artifacts: list[Path]) -> str:
    """One run holding a benchmark report: its numbers as metrics (flattened names), its files as artifacts."""
    import mlflow

    experiment_id = setup(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(params).items()})
        mlflow.log_metrics(_numbers(report))
        for path in artifacts:
            mlflow.log_artifact(str(path))
        return run.info.run_id


# ----------------------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class Promotion:
    """Outcome of registering a run's INT8 model."""

    model_name: str
    version: str
    alias: str | None  # "champion", "challenger" or None
    reason: str


def _beats(new: float, old: float, greater_is_better: bool) -> bool:
    return new > old if greater_is_better else new < old


def promote(run_id: str, cfg: Config) -> Promotion:
    """Register the run's INT8 model as a new version and move aliases by the rules.

    ``champion`` moves only if every gate passed AND the version beats the current champion on
    ``registry.primary_metric``; a passing version that does not beat it gets ``challenger``; a failing one gets no
    alias. Gate checks become version tags. Registering the same run twice returns the existing version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from pruning.errors import PruningError

    setup(cfg.tracking.experiment)
    client = mlflow.MlflowClient()
    name, metric = cfg.registry.model_name, cfg.registry.primary_metric
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise PruningError(f"MLflow run {run_id!r} not found at {mlflow.get_tracking_uri()}") from None
    if INT8_MODEL_TAG not in run.data.tags:
        raise PruningError(f"MLflow run {run_id!r} has no INT8 model (tag {INT8_MODEL_TAG}); is it a pipeline run?")
    gates = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/gates.json")
    value = run.data.metrics.get(metric)
    if value is None:
        raise PruningError(f'registry.primary_metric "{metric}" was not logged in run {run_id}')

    existing = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("run_id") == run_id] \
        if client.search_registered_models(f"name='{name}'") else []
    if existing:
        mv = existing[0]
        aliases = [a for a in ("champion", "challenger") if a in (mv.aliases or [])]
        return Promotion(name, str(mv.version), aliases[0] if aliases else None, "already registered")

    mv = mlflow.register_model(run.data.tags[INT8_MODEL_TAG], name, tags={
        "run_id": run_id, "gates": "passed" if gates["passed"] else "failed", metric: str(value),
        "params_hash": run.data.tags.get("params_hash", ""), "git_commit": run.data.tags.get("git_commit", "")})
    for check in gates["checks"]:
        client.set_model_version_tag(name, mv.version, f"gate.{check['name']}",
                                     f"{'pass' if check['passed'] else 'FAIL'}: {check['metric']} = {check['value']} "
                                     f"{check['op']} {check['threshold']}")
    if not gates["passed"]:
        failed = ", ".join(c["name"] for c in gates["checks"] if not c["passed"])
        return Promotion(name, str(mv.version), None, f"gates failed: {failed}")
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    if champion is not None:
        old = float(champion.tags.get(metric, "nan"))
        if not _beats(value, old, cfg.registry.greater_is_better):
            client.set_registered_model_alias(name, "challenger", mv.version)
            return Promotion(name, str(mv.version), "challenger",
                             f"{metric} {value:.4g} does not beat champion v{champion.version} ({old:.4g})")
    client.set_registered_model_alias(name, "champion", mv.version)
    reason = "first champion" if champion is None else f"beats champion v{champion.version} on {metric}"
    return Promotion(name, str(mv.version), "champion", reason)
