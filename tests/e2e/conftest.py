"""The end-to-end tests' fixtures: Prefect's test harness (one server per test run, for the tests that need it; they
share an xdist group, so they run on the worker that started it) and a repository for the flow."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import fresh_store

FLOW_EXPERIMENT = {"tracking": {"enabled": True, "experiment": "flow-test"}}
PREFECT = pytest.mark.xdist_group("prefect")  # the tests that use the harness: one worker, one server


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    """prefect_test_harness: a temporary Prefect server and database, PREFECT_API_URL pointing at it."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    with prefect_test_harness(server_startup_timeout=90):
        yield


def _tracked(root: Path, template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MLflow on a fresh store in ``root`` (MLFLOW_TRACKING_URI, as the pipeline's children read it), and this
    interpreter's bin/ first on PATH (dvc.yaml's commands call `python`)."""
    uri = fresh_store(template, root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return root


@pytest.fixture
def repo(tmp_path, mlflow_template, monkeypatch):
    """A new git + DVC repository with the tiny params, tracking on: nothing has run in it yet."""
    from tests.golden import init_repo

    return _tracked(init_repo(tmp_path / "repo", FLOW_EXPERIMENT), mlflow_template, monkeypatch)


@pytest.fixture
def ran_repo(golden_repo, mlflow_template, monkeypatch):
    """A copy of the golden run (every stage ran and is recorded), tracking turned on: DVC reruns evaluate only."""
    from tests.conftest import write_params

    write_params(golden_repo, FLOW_EXPERIMENT)
    return _tracked(golden_repo, mlflow_template, monkeypatch)
