"""The end-to-end tests' fixtures: a Prefect server for the tests that talk to one (one per test run; they share an
xdist group, so they run on the worker that started it), Prefect homes copied from one migrated database, and
repositories for the flow."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import fresh_store

FLOW_EXPERIMENT = {"tracking": {"enabled": True, "experiment": "flow-test"}}
PREFECT = pytest.mark.xdist_group("prefect")  # the tests that use the harness: one worker, one server


@pytest.fixture(scope="session")
def prefect_template(tmp_path_factory) -> Path:
    """A Prefect home whose database is created and migrated once per test run, for every worker: each server the
    tests start (the harness, the ephemeral one `python -m pruning run` launches) works on a copy of it, instead of
    migrating a new database of its own (most of a server's start-up: docs/contributing.md)."""
    from tests.conftest import built_once

    def migrate(home: Path) -> None:
        subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], check=True,
                       env={**os.environ, "PREFECT_HOME": str(home)}, capture_output=True, timeout=600)

    return built_once(tmp_path_factory, "prefect-template", migrate)


def prefect_home(template: Path, dest: Path) -> Path:
    """A Prefect home of its own for a process that starts a server: a copy of the migrated template."""
    shutil.copytree(template, dest)
    return dest


@contextlib.contextmanager
def prefect_server(template: Path, home: Path):
    """A Prefect server on a copy of the migrated template in ``home``; yields its API URL. This process's settings
    point at it meanwhile (PREFECT_HOME in the environment too, for the processes a test starts)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )

    home = prefect_home(template, home)
    before = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    with temporary_settings(updates={PREFECT_HOME: home,
                                     PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{home}/prefect.db"}):
        server = SubprocessASGIServer()
        prior = SubprocessASGIServer._instances.get(None)
        SubprocessASGIServer._instances[None] = server  # a flow finds this server, never starts one of its own
        server.start(timeout=90)
        try:
            with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
                yield server.api_url
        finally:
            server.stop()
            SubprocessASGIServer._instances[None] = prior
            if before is None:
                os.environ.pop("PREFECT_HOME", None)
            else:
                os.environ["PREFECT_HOME"] = before


@contextlib.contextmanager
def mlflow_server(root: Path):
    """An MLflow tracking server on a real PostgreSQL, as docker/compose.yaml runs it (pgserver: a self-contained
    PostgreSQL from the package registry, here with its data in ``root``); started in the background, so a test does
    its other work while the server migrates its tables. Yields a function that waits for the server and returns its
    URI."""
    import socket
    import urllib.request

    import pgserver

    root.mkdir(parents=True, exist_ok=True)
    database = pgserver.get_server(root / "pgdata", cleanup_mode="stop")
    store = database.get_uri().replace("postgresql://", "postgresql+psycopg2://")  # SQLAlchemy's default is psycopg 3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (root / "mlflow-server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                               "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    uri = f"http://127.0.0.1:{port}"

    def ready(timeout: float = 120) -> str:
        import time
        deadline = time.monotonic() + timeout
        while True:
            assert server.poll() is None, (root / "mlflow-server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                return uri
            except OSError:
                assert time.monotonic() < deadline, "the MLflow server did not answer"
                time.sleep(0.3)

    try:
        yield ready
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        database.cleanup()


@pytest.fixture(scope="session")
def harness(prefect_template, tmp_path_factory):
    """What prefect_test_harness does — a Prefect server on a database of the tests' own, PREFECT_API_URL pointing at
    it — on a copy of the migrated template instead of a database it migrates itself."""
    with prefect_server(prefect_template, tmp_path_factory.mktemp("prefect") / "home"):
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
