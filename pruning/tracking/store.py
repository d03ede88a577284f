"""The MLflow store: created whole (under a lock), pointed at, its failures as one line; the helpers that turn a
report into MLflow params and metrics. The pipeline's runs (pipeline.py), the registry (registry.py) and the
benchmarks' runs (benchmarks.py) build on it."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from pruning import faults
from pruning.atomic import remove_leftovers
from pruning.errors import PruningError

DEFAULT_DB = "mlflow.db"  # sqlite:///<workspace>/mlflow.db unless MLFLOW_TRACKING_URI says otherwise
ARTIFACT_DIR = "mlartifacts"
MODEL_TAG = "{}_model_uri"  # parent-run tag holding a logged model's URI, by the model's name
INT8_MODEL_TAG = MODEL_TAG.format("int8")
FP32_MODEL_TAG = MODEL_TAG.format("pruned_fp32")


# A pipeline run talks to MLflow at the very end of a long job: an unreachable server must fail within seconds, not
# after MLflow's default 7 retries with exponential back-off (4.5 minutes). The user's own settings win.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                  # promote reads gates.json back from the run: a tqdm bar per small file is noise in a log
                  "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


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


def create_sqlite_store(db: Path, artifacts: Path) -> None:
    """Create (and migrate) a new sqlite store in a temporary file, then move it into place: a kill at any moment leaves
    either no store or a complete one, never a half-migrated one. A failure on the way (a full disk) removes the
    temporary file and is one line naming the store and the reason (:class:`~pruning.errors.PruningError`)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    remove_leftovers(db)  # the temporary stores of creators that were killed
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    uri = f"sqlite:///{tmp}"
    try:
        try:
            SqlAlchemyStore(uri, artifacts.as_uri())  # creates every table (tracking and registry), migrates to head
        finally:
            engine = SqlAlchemyStore._engine_map.pop(uri, None)
            if engine is not None:
                engine.dispose()
        faults.point("mlflow:store")
        os.replace(tmp, db)
    except BaseException as exc:  # Ctrl-C included: nothing of this store is left behind
        for leftover in (tmp, *(tmp.with_name(tmp.name + end) for end in ("-journal", "-wal", "-shm"))):
            with suppress(OSError):
                leftover.unlink()
        if isinstance(exc, Exception):
            raise PruningError(f"cannot create the MLflow store {db}: {failure_reason(exc)}") from None
        raise


def failure_reason(exc: BaseException) -> str:
    """What a failed write to the store comes down to, in a few words: "no space left on device" for a full disk,
    however deep it is wrapped (sqlite says "database or disk is full"), else the innermost OS or sqlite message."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "orig", None)
    for e in chain:
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "database or disk is full" in str(e):
            return "no space left on device"
    for e in reversed(chain):  # the innermost first: sqlite3's own words, not SQLAlchemy's SQL dump
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        if type(e).__module__ == "sqlite3":
            return str(e)
    return (str(chain[0]).strip().splitlines() or [type(chain[0]).__name__])[0][:300]


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
                    create_sqlite_store(db, Path(root).absolute() / ARTIFACT_DIR)
        except OSError as exc:  # its directory or the lock file
            raise PruningError(f"cannot create the MLflow store {db}: {failure_reason(exc)}") from None
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
        if db is not None and _damaged(exc):
            fix = (f" (the file is damaged: move it aside (mv {db} {db}.broken) and rerun, or set "
                   "MLFLOW_TRACKING_URI)")
        elif db is None and not _refused(exc):
            fix = " (start the tracking server, fix MLFLOW_TRACKING_URI, or set tracking.enabled: false)"
        else:  # the store answered and refused one request: its own words are the fix, the store is healthy
            fix = ""
        raise PruningError(f"MLflow store {uri} failed: {type(exc).__name__}: {first}{fix}") from None


# what sqlite says of a file that is no whole store (cut short, overwritten, or created half by an old version)
_DAMAGE = ("file is not a database", "database disk image is malformed", "no such table", "no such column")


def _damaged(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) says the sqlite file itself is damaged, not that one request was wrong."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(text in str(exc) for text in _DAMAGE):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _refused(exc: BaseException) -> bool:
    """True when a server answered and refused the request (a bad value, a missing resource): no outage."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.get_http_status_code() < 500


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


def numbers(tree: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in flatten(tree).items() if isinstance(v, int | float) and not isinstance(v, bool)}


def warm_up(experiment: str, root: str | Path = ".") -> None:
    """Open the store and import what logging a run needs, ahead of time (the flow does it while Prefect starts)."""
    import matplotlib

    matplotlib.use("Agg")  # as pruning.tracking.figures does: no display here
    import matplotlib.pyplot  # noqa: F401
    import mlflow.onnx  # noqa: F401

    setup(experiment, root)
