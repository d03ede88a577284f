"""One pipeline run in MLflow: a parent run + one nested run per stage (the rows of :data:`pruning.stages.STAGES`, which
the evaluate stage hands over in the record: tracking does not import the stages).

The parent run holds what a reviewer reads first: the summary table as its description, the gate verdict as tags,
the params the pipeline used (not the benchmarks' or the paths), the final metrics (metrics.json + latency.json;
``bN`` named after its batch size, e.g. ``latency_ms_b32``), the dataset as an MLflow input with the hash DVC
records, and the figures (what ships: metric vs MACs and latency; the pruning steps; the structure found). Each nested
run is logged the same way for every stage: the params keys it reads, the numbers of its JSON reports (lists of
per-epoch / per-step records as curves; a summary number whose name a curve also uses is logged as ``final_<name>``,
so a curve never gets a stray point at step 0), the reports as artifacts, and its ONNX models. The gated stage
(evaluate) logs no metrics of its own: they are the parent's.

Why runs are created with explicit times: the stages run before this is called (often in other processes, under
DVC), so a run opened now would last a second. Every run gets its stage's real start and end from paths.stage_times;
a stage DVC did not rerun (its inputs unchanged) gets a zero-length run tagged ``dvc = reused``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pruning import faults
from pruning.atomic import alive
from pruning.tracking import figures
from pruning.tracking.store import MODEL_TAG, flatten, numbers, setup, store_errors

if TYPE_CHECKING:
    from pruning.config import PathsConfig

log = logging.getLogger(__name__)

_SERIES_KEYS = ("epoch", "step", "round")
_SETTINGS = ("batch_size_N", "threads")  # how latency was measured: params of the run, not metrics
EXPERIMENT_KIND = "custom_model_development"  # the UI opens it as model training, not as the GenAI (traces) view
# The query that opens MLflow 3.x's UI on its model-training view (runs, models): the experiment kind alone does not,
# the UI starts in its GenAI view (traces, evaluation runs) whatever the experiment is
UI_VIEW = "workflowType=machine_learning"


class TrackedStage(Protocol):
    """What tracking reads of a row of the stage table (:class:`pruning.stages.Stage`)."""

    name: str
    params: tuple[str, ...]  # params.yaml keys it reads: its nested run's params
    reports: tuple[str, ...]  # paths.* keys of its JSON reports: metrics, curves, artifacts
    artifacts: tuple[str, ...]  # paths.* keys of other files logged as they are
    models: dict[str, str]  # MLflow model name -> paths.* key of an ONNX file
    gated: bool  # its figures are the parent run's
    settings: dict[str, str]  # report key -> the params.yaml key it repeats: a param of the run, not a metric


@dataclass(frozen=True)
class PipelineRecord:
    """What the evaluate stage hands over: the params, resolved paths, final metrics and gates, tags, test samples."""

    params: dict[str, Any]
    paths: PathsConfig
    metrics: dict[str, Any]
    gates: dict[str, Any]
    tags: dict[str, str]
    example: Any  # a few real test inputs: an array, or a model's inputs (tuple / dict) when it has several
    times: dict[str, dict[str, Any]]  # paths.stage_times: {stage: {start, end}} (Unix seconds; evaluate's end None)
    since: float = 0.0  # when the previous pipeline ended (the last evaluate's end): a stage started after it ran here
    summary: str = ""  # Markdown: the parent run's description
    stages: Sequence[TrackedStage] = ()  # the pipeline's stages, in order: one nested run each
    shipped: str = "quantized"  # the variant that ships


def metric_name(name: str, batch_n: int | None) -> str:
    """The MLflow name of a metrics.json / latency.json key: ``..._bN`` says its batch size (``..._b32``)."""
    return f"{name[:-1]}{batch_n}" if batch_n is not None and name.endswith("_bN") else name


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def spans(names: Sequence[str], times: dict[str, dict[str, Any]], now: float, since: float = 0.0
          ) -> tuple[float, dict[str, tuple[float, float, bool]]]:
    """The pipeline's start and each stage's (start, end, ran in this pipeline), for the stages ``names`` in order.

    A stage ran in this pipeline when it started after ``since``: the end of the previous pipeline (the last run of
    the last stage, the one that logs the pipeline; 0 when there was none). The last stage is running now: its end is
    ``now``. The pipeline starts when the first stage that ran started; a stage that did not run here (DVC reused its
    outputs) gets a zero-length span there."""
    out: dict[str, tuple[float, float, bool]] = {}
    for name in names:
        t = times.get(name, {})
        start, end = t.get("start"), now if name == names[-1] else t.get("end")
        if isinstance(start, int | float) and isinstance(end, int | float) and start > since:
            out[name] = (float(start), float(end), True)
    first = min((start for start, _, _ in out.values()), default=now)
    return first, {name: out.get(name, (first, first, False)) for name in names}


def log_pipeline(record: PipelineRecord, experiment: str, root: str | Path = ".") -> str:
    """Log one pipeline run (parent + a nested run per stage). Returns the parent run id.

    Runs a killed pipeline left RUNNING are marked KILLED first; an exception on the way ends the runs FAILED and
    becomes one line (:func:`~pruning.tracking.store.store_errors`)."""
    import mlflow

    experiment_id = setup(experiment, root)
    with store_errors(mlflow.get_tracking_uri()):
        reap(experiment_id)
        return _log_pipeline(record, experiment_id)


def _log_pipeline(record: PipelineRecord, experiment_id: str) -> str:
    import mlflow

    client, p = mlflow.MlflowClient(), record.paths
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", EXPERIMENT_KIND)
    client.set_experiment_tag(experiment_id, "mlflow.note.content", "Structural pruning pipeline runs: one parent "
                              "run per pipeline run (dense -> pruned -> INT8 ONNX, with its gates), one nested run "
                              "per stage. The registry holds the shipped models; alias `champion` = the best that "
                              "passed every gate.")
    first, stage_spans = spans([s.name for s in record.stages], record.times, time.time(), record.since)
    batch_n = record.metrics.get("batch_size_N")
    parent = client.create_run(experiment_id, start_time=_ms(first), run_name=f"pipeline-{record.tags['params_hash'][:8]}",
                               tags={**_owner(), "mlflow.note.content": record.summary})
    with mlflow.start_run(run_id=parent.info.run_id):
        mlflow.set_tags({**record.tags, "gates": "passed" if record.gates["passed"] else "failed"})
        mlflow.log_params(_used_params(record.params, record.stages))
        mlflow.log_params({f"latency.{k}": record.metrics[k] for k in _SETTINGS if k in record.metrics})
        mlflow.log_metrics({metric_name(k, batch_n): v for k, v in numbers(record.metrics).items()
                            if k not in _SETTINGS})
        mlflow.log_dict(record.params, "params.json")  # every setting, the defaults params.yaml left out included
        mlflow.log_dict(record.metrics, "metrics.json")
        mlflow.log_dict(record.gates, "gates.json")
        _log_input(record)
        report = json.loads(Path(p.prune_report).read_text())
        _log_csv(report["layers"], "prune_layers.csv")
        mlflow.log_figure(figures.tradeoff(record.metrics, batch_n or 0, record.shipped), "tradeoff.png")
        mlflow.log_figure(figures.accuracy_vs_macs(json.loads(Path(p.prune_steps).read_text())), "prune_steps.png")
        if report.get("structure"):  # a method that reports the structure it found (complexity_aware)
            mlflow.log_figure(figures.structure(report["structure"]), "structure.png")
        models: dict[str, str] = {}
        for stage in record.stages:
            _log_stage(stage, record, models, experiment_id, parent.info.run_id, stage_spans[stage.name])
            faults.point("mlflow:logging")
        mlflow.set_tags({MODEL_TAG.format(name): uri for name, uri in models.items()})
        return parent.info.run_id


def _used_params(params: dict[str, Any], stages: Sequence[TrackedStage]) -> dict[str, str]:
    """The params.yaml keys some stage or the registry reads (not the paths, the schedule or the benchmarks')."""
    return _params(params, tuple({k for stage in stages for k in stage.params} | {"registry"}))


def _params(params: dict[str, Any], keys: tuple[str, ...]) -> dict[str, str]:
    """The settings under ``keys`` as MLflow params, flattened (``prune.ratio``, ``seed``, ``export.opset``): what is
    unset (None) left out, each gate one param (``gates.macs`` = ``macs_reduction >= 2.0``) instead of four."""
    flat = flatten({k: v for k, v in params.items() if k != "gates"})
    flat.update({f"gates.{name}": _gate(gate) for name, gate in (params.get("gates") or {}).items()})
    return {k: str(v)[:6000] for k, v in flat.items()
            if v is not None and any(k == key or k.startswith(key + ".") for key in keys)}


def _gate(gate: dict[str, Any]) -> str:
    """A gate of params.yaml in one line, as the gates report says it (``quantized.accuracy (diff vs dense) >= -0.01``)."""
    from pruning.acceptance.gates import gate_metric

    return f"{gate_metric(gate['metric'], gate.get('relative_to_dense'))} {gate['op']} {gate['threshold']:g}"


def _log_input(record: PipelineRecord) -> None:
    """The train and test splits as MLflow dataset inputs, their digest the md5 DVC records for the files."""
    import mlflow
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.meta_dataset import MetaDataset

    for context, key, tag in (("training", "train_data", "data_md5_train"), ("testing", "test_data", "data_md5_test")):
        path = Path(getattr(record.paths, key))
        source = str(record.params.get("data", {}).get("source", "data"))
        local = get_dataset_source_from_json(json.dumps({"uri": path.absolute().as_uri()}), "local")
        dataset = MetaDataset(local, name=f"{source}:{path.name}",
                              digest=record.tags.get(tag, "")[:36] or None)
        mlflow.log_input(dataset, context=context, tags={"dvc_md5": record.tags.get(tag, "")})


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


def _curves_and_summary(docs: list[Any], settings: dict[str, Any] | None = None,
                        ) -> tuple[list[tuple[list[dict[str, Any]], str]], dict[str, float]]:
    """A stage's reports as (curves, summary numbers); a summary number whose name a curve uses becomes
    ``final_<name>`` (one name, one meaning: the curve). ``settings``: report key -> the value of the param it
    repeats; such a number is left out (export's opset, quantize's calibration samples: params of the run, a metric
    would chart a constant), unless the stage computed another value (a ratio prune searched for, prune.ratio unset)."""
    curves: list[tuple[list[dict[str, Any]], str]] = []
    summary: dict[str, float] = {}
    settings = settings or {}
    for doc in docs:
        if (step := _series_key(doc)) is not None:
            curves.append((doc, step))
        elif isinstance(doc, dict):
            summary.update(numbers({k: v for k, v in doc.items()
                                    if _series_key(v) is None and not (k in settings and settings[k] == v)}))
            curves += [(rows, step) for rows in doc.values() if (step := _series_key(rows)) is not None]
    names = {k for rows, _ in curves for row in rows for k in row}
    return curves, {(f"final_{k}" if k in names else k): v for k, v in summary.items()}


def _log_stage(stage: TrackedStage, record: PipelineRecord, models: dict[str, str], experiment_id: str, parent_id: str,
               span: tuple[float, float, bool]) -> None:
    """One nested run, the same for every stage (see the module docstring), spanning the stage's real time."""
    import mlflow

    start, end, ran = span
    client = mlflow.MlflowClient()
    tags = {"mlflow.parentRunId": parent_id, "stage": stage.name, "dvc": "ran" if ran else "reused", **_owner()}
    if not ran:
        tags["mlflow.note.content"] = ("DVC reused this stage's outputs (its inputs had not changed): the figures "
                                       "are those of the run that produced them.")
    run_id = client.create_run(experiment_id, start_time=_ms(start), tags=tags, run_name=stage.name).info.run_id
    with mlflow.start_run(run_id=run_id, nested=True):
        mlflow.log_params(_params(record.params, stage.params))
        paths = [Path(getattr(record.paths, key)) for key in stage.reports]
        if not stage.gated:  # the gated stage's figures are the parent run's
            flat = flatten(record.params)
            curves, summary = _curves_and_summary([json.loads(path.read_text()) for path in paths],
                                                  {k: flat.get(key) for k, key in stage.settings.items()})
            mlflow.log_metrics(summary)
            for rows, step in curves:
                _series(run_id, rows, step)
        for path in paths:
            mlflow.log_artifact(str(path))
        for key in stage.artifacts:
            mlflow.log_artifact(getattr(record.paths, key))
        for name, key in stage.models.items():
            models[name] = _log_onnx(getattr(record.paths, key), name, record.example).model_uri
    client.set_terminated(run_id, "FINISHED", end_time=_ms(end if stage is not record.stages[-1] else time.time()))


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
    # requirements by importing the model in a subprocess (most of the MLflow time of a run: docs/design.md,
    # "Measured reasons").
    return mlflow.onnx.log_model(onnx.load(path), name=name, signature=infer_signature(example, output),
                                 input_example=example, onnx_execution_providers=["CPUExecutionProvider"],
                                 save_as_external_data=False,
                                 pip_requirements=mlflow.onnx.get_default_pip_requirements())


def _log_csv(rows: list[dict[str, Any]], name: str) -> None:
    import mlflow

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    mlflow.log_text(buf.getvalue(), name)


_HOST, _PID = "pruning.host", "pruning.pid"


def _owner() -> dict[str, str]:
    """Tags naming the process that logs a run: a later run can tell a run whose process died from one in progress."""
    return {_HOST: socket.gethostname(), _PID: str(os.getpid())}


def reap(experiment_id: str) -> list[str]:
    """Mark KILLED the runs this machine left RUNNING in the experiment whose process is gone (a pipeline killed while
    logging); runs of live processes, or of other machines, are left alone. Returns the run ids marked."""
    import mlflow

    client, host, reaped = mlflow.MlflowClient(), socket.gethostname(), []
    runs = client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{_HOST}` = '{host}'",
                              max_results=1000)
    for run in runs:
        pid = run.data.tags.get(_PID, "")
        if pid.isdigit() and not alive(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")
            reaped.append(run.info.run_id)
    if reaped:
        log.warning("MLflow: marked %d run(s) KILLED whose process had died while logging", len(reaped))
    return reaped
