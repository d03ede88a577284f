"""MLflow: the only module that imports mlflow. Runs, metrics, artifacts, models, registry and aliases.

One pipeline run = one parent run (all params flattened, final metrics under the names of reports/metrics.json and
latency.json, gates.json, the per-layer channel table, the accuracy-vs-MACs plot) + one nested run per row of
:data:`pruning.stages.STAGES`, logged the same way for every stage: the params keys it reads, the numbers of the
JSON reports it writes as metrics (lists of per-epoch / per-step records as curves), those reports as artifacts, and
the other artifacts and ONNX models the row names (models with signature and input example). The stages' files are
the record, so a parent run is complete even when DVC reused some stages from its cache (their nested runs then carry
the cached figures).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pruning.stages import STAGES, Stage

if TYPE_CHECKING:
    from pruning.config import Config, PathsConfig

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"  # sqlite:///<workspace>/mlflow.db unless MLFLOW_TRACKING_URI says otherwise
ARTIFACT_DIR = "mlartifacts"
MODEL_TAG = "{}_model_uri"  # parent-run tag holding a logged model's URI, by the model's name
INT8_MODEL_TAG = MODEL_TAG.format("int8")
FP32_MODEL_TAG = MODEL_TAG.format("pruned_fp32")
_SERIES_KEYS = ("epoch", "step", "round")


@dataclass(frozen=True)
class PipelineRecord:
    """What the evaluate stage hands over: the params, resolved paths, final metrics and gates, tags, test samples."""

    params: dict[str, Any]
    paths: PathsConfig
    metrics: dict[str, Any]
    gates: dict[str, Any]
    tags: dict[str, str]
    example: Any  # a few real test inputs: an array, or a model's inputs (tuple / dict) when it has several


def setup(experiment: str, root: str | Path = ".") -> str:
    """Point mlflow at MLFLOW_TRACKING_URI (default sqlite:///<root>/mlflow.db) and the experiment; returns its id.

    With the default store the experiment's artifacts go to <root>/mlartifacts (git-ignored), as with ``mlflow
    server``.
    """
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).absolute() / DEFAULT_DB}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        location = (Path(root).absolute() / ARTIFACT_DIR).as_uri() if uri.startswith("sqlite:") else None
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


def _series_key(rows: Any) -> str | None:
    """The step key of a list of records (per epoch / step / round), or None if ``rows`` is not one."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    return next((k for k in _SERIES_KEYS if all(k in r for r in rows)), None)


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


def _log_onnx(path: str, name: str, example: Any):
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    from pruning.runtime.session import feeds, run, session

    sess = session(path)
    feed = feeds(sess, example)
    output = run(sess, example)
    example = next(iter(feed.values())) if len(feed) == 1 else feed  # several inputs: a dict by input name
    # An ONNX model needs onnx + onnxruntime and nothing else to be served: say so, instead of letting MLflow infer
    # requirements by importing the model in a subprocess (1.7 s per model, most of the MLflow time of a run).
    return mlflow.onnx.log_model(onnx.load(path), name=name, signature=infer_signature(example, output),
                                 input_example=example, onnx_execution_providers=["CPUExecutionProvider"],
                                 save_as_external_data=False,
                                 pip_requirements=mlflow.onnx.get_default_pip_requirements())


def warm_up(experiment: str, root: str | Path = ".") -> None:
    """Open the store and import what logging a run needs, ahead of time (the flow does it while Prefect starts)."""
    import matplotlib

    matplotlib.use("Agg")  # as _accuracy_vs_macs_figure does: no display here
    import matplotlib.pyplot  # noqa: F401
    import mlflow.onnx  # noqa: F401

    setup(experiment, root)


def _stage_params(params: dict[str, Any], keys: tuple[str, ...]) -> dict[str, str]:
    """The params.yaml keys a stage reads, flattened (``prune.ratio``, ``seed``, ``export.opset``)."""
    flat = flatten(params)
    return {k: str(v)[:6000] for k, v in flat.items() if any(k == key or k.startswith(key + ".") for key in keys)}


def _log_stage(stage: Stage, record: PipelineRecord, models: dict[str, str]) -> None:
    """One nested run, the same for every stage (see the module docstring)."""
    import mlflow

    with _nested(stage.name) as run_id:
        mlflow.log_params(_stage_params(record.params, stage.params))
        for key in stage.reports:
            path = Path(getattr(record.paths, key))
            doc = json.loads(path.read_text())
            if (step := _series_key(doc)) is not None:
                _series(run_id, doc, step)
            elif isinstance(doc, dict):
                mlflow.log_metrics(_numbers({k: v for k, v in doc.items() if _series_key(v) is None}))
                for rows in doc.values():
                    if (step := _series_key(rows)) is not None:
                        _series(run_id, rows, step)
            mlflow.log_artifact(str(path))
        for key in stage.artifacts:
            mlflow.log_artifact(getattr(record.paths, key))
        for name, key in stage.models.items():
            models[name] = _log_onnx(getattr(record.paths, key), name, record.example).model_uri


def log_pipeline(record: PipelineRecord, experiment: str, root: str | Path = ".") -> str:
    """Log one pipeline run (parent + a nested run per stage). Returns the parent run id."""
    import mlflow

    experiment_id = setup(experiment, root)
    p = record.paths
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"pipeline-{record.tags['params_hash'][:8]}") as parent:
        mlflow.set_tags({**record.tags, "gates": "passed" if record.gates["passed"] else "failed"})
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(record.params).items()})
        mlflow.log_metrics(_numbers(record.metrics))
        mlflow.log_dict(record.metrics, "metrics.json")
        mlflow.log_dict(record.gates, "gates.json")
        _log_csv(json.loads(Path(p.prune_report).read_text())["layers"], "prune_layers.csv")
        mlflow.log_figure(_accuracy_vs_macs_figure(json.loads(Path(p.prune_steps).read_text())),
                          "accuracy_vs_macs.png")
        models: dict[str, str] = {}
        for stage in STAGES:
            _log_stage(stage, record, models)
        mlflow.set_tags({MODEL_TAG.format(name): uri for name, uri in models.items()})
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


def _champion_value(client: Any, champion: Any, metric: str) -> float | None:
    """The champion's value of ``metric``: its version tag, else its pipeline run's metric, else None."""
    if metric in champion.tags:
        return float(champion.tags[metric])
    run_id = champion.tags.get("run_id")
    try:
        value = client.get_run(run_id).data.metrics.get(metric) if run_id else None
    except Exception:  # noqa: BLE001 - a deleted run: nothing to compare with
        return None
    return float(value) if value is not None else None


def _beats(new: float, old: float, greater_is_better: bool) -> bool:
    return new > old if greater_is_better else new < old


def promote(run_id: str, cfg: Config, root: str | Path = ".") -> Promotion:
    """Register the run's INT8 model as a new version and move aliases by the rules.

    ``champion`` moves only if every gate passed AND the version beats the current champion on
    ``registry.primary_metric``; a passing version that does not beat it gets ``challenger``; a failing one gets no
    alias. Gate checks become version tags. Registering the same run twice returns the existing version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from pruning.errors import PruningError

    setup(cfg.tracking.experiment, root)
    client = mlflow.MlflowClient()
    name, metric = cfg.registry.model_name, cfg.registry.primary_metric
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise PruningError(f"MLflow run {run_id!r} not found at {mlflow.get_tracking_uri()}") from None
    # the model the evaluate stage chose to ship (evaluate.ship): INT8 where it pays, else the pruned fp32 model
    shipped = run.data.tags.get("shipped", "int8")
    model_tag = INT8_MODEL_TAG if shipped == "int8" else FP32_MODEL_TAG
    if model_tag not in run.data.tags:
        raise PruningError(f"MLflow run {run_id!r} has no {shipped} model (tag {model_tag}); is it a pipeline run?")
    gates = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/gates.json")
    value = run.data.metrics.get(metric)
    if value is None:
        raise PruningError(f'the primary metric "{metric}" was not logged in run {run_id}', field="primary_metric")

    existing = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("run_id") == run_id] \
        if client.search_registered_models(f"name='{name}'") else []
    if existing:
        mv = existing[0]
        aliases = [a for a in ("champion", "challenger") if a in (mv.aliases or [])]
        return Promotion(name, str(mv.version), aliases[0] if aliases else None, "already registered")

    mv = mlflow.register_model(run.data.tags[model_tag], name, tags={
        "run_id": run_id, "shipped": shipped, "gates": "passed" if gates["passed"] else "failed", metric: str(value),
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
    old = _champion_value(client, champion, metric) if champion is not None else None
    if champion is not None and old is None:
        # the champion was judged on another primary metric (params changed) and its run has no value for this one:
        # there is nothing to compare, and a champion nobody can beat would freeze the registry
        client.set_registered_model_alias(name, "champion", mv.version)
        return Promotion(name, str(mv.version), "champion", f"champion v{champion.version} has no {metric} to compare "
                         "(registry.primary_metric changed): replaced")
    if champion is not None and old is not None:
        better = cfg.registry.greater_is_better
        if better is None:  # the task metric's own direction
            from pruning.task import build_task

            better = build_task(cfg.task).greater_is_better
        if not _beats(value, old, better):
            client.set_registered_model_alias(name, "challenger", mv.version)
            return Promotion(name, str(mv.version), "challenger",
                             f"{metric} {value:.4g} does not beat champion v{champion.version} ({old:.4g})")
    client.set_registered_model_alias(name, "champion", mv.version)
    reason = "first champion" if champion is None else f"beats champion v{champion.version} on {metric}"
    return Promotion(name, str(mv.version), "champion", reason)
