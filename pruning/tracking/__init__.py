"""MLflow runs: runs, metrics, artifacts, models (this package is the only one that imports mlflow; the registry is
in registry.py).

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
import hashlib
import io
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pruning import faults
from pruning.atomic import alive, remove_leftovers
from pruning.errors import PruningError
from pruning.stages import STAGES, Stage
from pruning.tracking import figures

if TYPE_CHECKING:
    from pruning.config import PathsConfig

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


# A pipeline run talks to MLflow at the very end of a long job: an unreachable server must fail within seconds, not
# after MLflow's default 7 retries with exponential back-off (4.5 minutes). The user's own settings win.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def lock(uri: str, purpose: str, timeout: float = 600.0):
    """An inter-process lock for one store and one purpose (``"create"``, ``"registry"``), on this machine.

    Why a lock of our own: MLflow's sqlite tracking store creates its tables unlocked (two first runs at once left a
    half-migrated store that no open could repair), and its registry has no compare-and-set on an alias. The lock file
    lives beside a sqlite store, else in the temporary directory, named after the store's URI."""
    import filelock

    db = _sqlite_file(uri)
    name = f"{db.name}.{purpose}.lock" if db else f"pruning-mlflow-{hashlib.md5(uri.encode()).hexdigest()}.{purpose}.lock"
    where = db.parent if db else Path(tempfile.gettempdir())
    return filelock.FileLock(str(where / name), timeout=timeout)


def _create_sqlite_store(db: Path, artifacts: Path) -> None:
    """Create (and migrate) a new sqlite store in a temporary file, then move it into place: a kill at any moment leaves
    either no store or a complete one, never a half-migrated one."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    remove_leftovers(db)  # the temporary stores of creators that were killed
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    uri = f"sqlite:///{tmp}"
    try:
        SqlAlchemyStore(uri, artifacts.as_uri())  # creates every table (tracking and registry) and migrates to head
    finally:
        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()
    faults.point("mlflow:store")
    os.replace(tmp, db)


def setup(experiment: str, root: str | Path = ".") -> str:
    """Point mlflow at MLFLOW_TRACKING_URI (default sqlite:///<root>/mlflow.db) and the experiment; returns its id.

    With the default store the experiment's artifacts go to <root>/mlartifacts (git-ignored), as with ``mlflow
    server``. A new sqlite store is created whole or not at all, one process at a time; a store that cannot be opened
    or a server that does not answer is a one-line :class:`~pruning.errors.PruningError`.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # urllib3 warns once per retry, five lines each; a server that stays down is reported once, by store_errors
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).absolute() / DEFAULT_DB}"
    db = _sqlite_file(uri)
    if db is not None and not db.is_file():
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            with lock(uri, "create"):
                if not db.is_file():
                    _create_sqlite_store(db, Path(root).absolute() / ARTIFACT_DIR)
        except OSError as exc:
            raise PruningError(f"cannot create the MLflow store {db}: {exc.strerror or exc}") from None
    mlflow.set_tracking_uri(uri)
    with store_errors(uri):
        client = mlflow.MlflowClient()
        found = client.get_experiment_by_name(experiment)
        if found is None:
            location = (Path(root).absolute() / ARTIFACT_DIR).as_uri() if db is not None else None
            try:
                experiment_id = client.create_experiment(experiment, artifact_location=location)
            except MlflowException:  # another first run created it since the look-up: use theirs
                if (found := client.get_experiment_by_name(experiment)) is None:
                    raise
                experiment_id = found.experiment_id
        else:
            experiment_id = found.experiment_id
        mlflow.set_experiment(experiment_id=experiment_id)  # nested runs inherit the active experiment
    return experiment_id


@contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """Any failure to talk to the store as one line that says what to do (no MLflow traceback)."""
    try:
        yield
    except PruningError:
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, SQLAlchemy, requests: all mean "the store failed"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        db = _sqlite_file(uri)
        if db is not None:
            fix = (f"if a run was killed while creating it, move it aside (mv {db} {db}.broken) and rerun; or set "
                   "MLFLOW_TRACKING_URI")
        else:
            fix = "start the tracking server, fix MLFLOW_TRACKING_URI, or set tracking.enabled: false"
        raise PruningError(f"MLflow store {uri} failed: {type(exc).__name__}: {first} ({fix})") from None


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

    with mlflow.start_run(run_name=name, nested=True, tags={"stage": name, **_owner()}) as run:
        yield run.info.run_id


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

    matplotlib.use("Agg")  # as pruning.tracking.figures does: no display here
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


def log_pipeline(record: PipelineRecord, experiment: str, root: str | Path = ".") -> str:
    """Log one pipeline run (parent + a nested run per stage). Returns the parent run id.

    Runs a killed pipeline left RUNNING are marked KILLED first; an exception on the way ends the runs FAILED (MLflow's
    ``start_run`` context) and becomes one line (:func:`store_errors`)."""
    import mlflow

    experiment_id = setup(experiment, root)
    with store_errors(mlflow.get_tracking_uri()):
        reap(experiment_id)
        return _log_pipeline(record, experiment_id)


def _log_pipeline(record: PipelineRecord, experiment_id: str) -> str:
    import mlflow

    p = record.paths
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"pipeline-{record.tags['params_hash'][:8]}",
                          tags=_owner()) as parent:
        mlflow.set_tags({**record.tags, "gates": "passed" if record.gates["passed"] else "failed"})
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(record.params).items()})
        mlflow.log_metrics(_numbers(record.metrics))
        mlflow.log_dict(record.metrics, "metrics.json")
        mlflow.log_dict(record.gates, "gates.json")
        _log_csv(json.loads(Path(p.prune_report).read_text())["layers"], "prune_layers.csv")
        mlflow.log_figure(figures.accuracy_vs_macs(json.loads(Path(p.prune_steps).read_text())),
                          "accuracy_vs_macs.png")
        structure = json.loads(Path(p.prune_report).read_text()).get("structure")
        if structure:  # a method that reports the structure it found (complexity_aware)
            mlflow.log_figure(figures.structure(structure), "structure.png")
        models: dict[str, str] = {}
        for stage in STAGES:
            _log_stage(stage, record, models)
            faults.point("mlflow:logging")
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


from pruning.tracking.registry import Promotion, promote  # noqa: E402, F401 - re-exported; the registry builds on the set-up above
