"""Shared fixtures: a tiny configuration (seconds, not minutes), the golden run (one pipeline run per test run, shared
by every worker: tests/golden.py) and an empty MLflow store to copy."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The harness's API URL stays set for the whole session on its worker, and importing the flow adds Prefect's API log
# handler to the "pruning" logger: the library's log records outside a flow run (every other test) are not the API's
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# Idle OpenMP threads sleep instead of spinning (here and in every process a test starts; set before torch is
# imported): two workers on two cores, each with torch's two threads spinning between tiny ops, ran about twice slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
BUILT = ".built"  # in a directory built_once filled: it is complete

TINY: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",  # every key dvc.yaml tracks must be in params.yaml (DVC refuses a missing one)
    "threads": None,
    "distributed": {"nproc": 1, "backend": "gloo", "timeout": 300},
    "data": {"source": "digits"},
    "task": {"loss": "cross_entropy", "metric": "accuracy"},
    "model": {"arch": "resnet", "kwargs": {"widths": [8, 16, 32], "blocks": [1, 1, 1]}},
    "train": {"epochs": 4, "batch_size": 64, "lr": 0.05},
    "prune": {"criterion": "l2", "ratio": 0.5, "iterative_steps": 2, "step_finetune_epochs": 1, "round_to": None},
    "finetune": {"epochs": 2, "distill": {"enabled": True}},
    "export": {"parity_samples": 64, "opset": 17},
    "quantize": {"mode": "static", "calibration_samples": 64},
    "evaluate": {"batch_size": 16, "warmup": 1, "repeats": 3, "rounds": 1},
    "gates": {
        "macs": {"metric": "macs_reduction", "op": ">=", "threshold": 2.0},
        "parity": {"metric": "parity_score", "op": "<=", "threshold": 1.0},
    },
    "tracking": {"enabled": False},  # the MLflow tests turn it on, with a store in their tmp_path
    "registry": {"model_name": "tiny-int8"},
    "paths": yaml.safe_load((REPO / "params.yaml").read_text())["paths"],
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The directory is the marker: tests/e2e/ are ``e2e``, tests/bench/ ``bench`` (make test-fast skips both)."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO).parts
        if parts[:2] in (("tests", "e2e"), ("tests", "bench")):
            item.add_marker(parts[1])


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base`` (a value of None in ``over`` sets None; a section naming another
    ``method`` replaces the whole section, since its keys are that method's; builder ``kwargs`` are replaced whole)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and value and key != "kwargs" and \
                value.get("method", out[key].get("method")) == out[key].get("method"):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_params(directory: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Write a tiny params.yaml (plus ``overrides``) into ``directory``."""
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(merge(TINY, overrides or {}), sort_keys=False))
    return path


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test from an empty directory (stage paths are relative to the working directory)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_cfg(in_tmp: Path):
    """The tiny Config, loaded from a params.yaml in the test's own directory."""
    from pruning.config import load_config

    return load_config(write_params(in_tmp))


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary directory every xdist worker of this test run shares (each worker's basetemp is inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> Path:
    """The directory ``name`` in the shared temporary directory, filled by ``build(directory)`` once per test run for
    every worker (under a file lock; marked complete only once ``build`` returned, so one killed half-way is redone)."""
    import filelock

    shared = _shared_dir(tmp_path_factory)
    where = shared / name
    with filelock.FileLock(str(shared / f"{name}.lock")):
        if not (where / BUILT).is_file():
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir()
            build(where)
            (where / BUILT).touch()
    return where


@pytest.fixture(scope="session")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden run (tests/golden.py): a git + DVC repository where every stage ran on the tiny config, recorded in
    dvc.lock and committed. Built once per test run for all workers; read-only: copy it to change anything."""
    from tests import golden as g

    return built_once(tmp_path_factory, "golden", lambda where: g.build(where / "repo")) / "repo"


@pytest.fixture
def golden_repo(golden: Path, tmp_path: Path) -> Path:
    """A private copy of the golden repository (git history, DVC cache, outputs), in the test's tmp_path."""
    from tests.golden import copy_repo

    return copy_repo(golden, tmp_path / "repo")


@pytest.fixture(scope="session")
def trained(golden: Path) -> Path:
    """A directory where prepare + train (and every later stage) already ran on the tiny config: shared, read-only."""
    return golden


@pytest.fixture(scope="session")
def finished(golden: Path) -> Path:
    """A directory where every stage already ran on the tiny config: shared, read-only."""
    return golden


def _copy(src: Path, dst: Path) -> Path:
    for sub in ("data", "models", "reports"):
        shutil.copytree(src / sub, dst / sub)
    shutil.copy(src / "params.yaml", dst / "params.yaml")
    return dst


@pytest.fixture
def trained_copy(trained: Path, in_tmp: Path) -> Path:
    """A private copy of ``trained``'s outputs and params as the working directory (no git, no DVC)."""
    return _copy(trained, in_tmp)


@pytest.fixture
def finished_copy(finished: Path, in_tmp: Path) -> Path:
    """A private copy of ``finished``'s outputs and params as the working directory (no git, no DVC)."""
    return _copy(finished, in_tmp)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store, created (tables migrated) once per test run: a test copies it instead of paying
    the migration, several seconds, for a store of its own (mlops-conventions: 7 s -> 0.07 s per test)."""
    from pruning.tracking.store import create_sqlite_store

    def create(where: Path) -> None:
        create_sqlite_store(where / "mlflow.db", where / "mlartifacts")

    return built_once(tmp_path_factory, "mlflow-template", create) / "mlflow.db"


def fresh_store(template: Path, root: Path) -> str:
    """A copy of the empty ``template`` store as ``root``/mlflow.db; returns its tracking URI."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, root / "mlflow.db")
    return f"sqlite:///{root}/mlflow.db"


@pytest.fixture
def mlflow_store(mlflow_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """MLFLOW_TRACKING_URI (and mlflow's client) on a fresh store in tmp_path; returns the URI."""
    import mlflow

    uri = fresh_store(mlflow_template, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    saved = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(saved)
