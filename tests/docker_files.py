"""Parsers of the container setup in docker/ for tests/test_docker.py (the Dockerfiles) and tests/test_compose.py
(compose.yaml): Dockerfile instructions, and compose services with Compose's interpolation defaults applied."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

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



def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (a volume name or a host path) of each of a service's volumes."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume.get("source", "")
        else:
            source, target = str(volume).split(":")[:2]
            mounts[target] = source
    return mounts
