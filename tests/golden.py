"""The golden run: one pipeline run per test run, which read-only tests share and mutating tests copy.

A real git + DVC repository (the shipped dvc.yaml and .gitignore, this checkout's pruning/ copied in, the tiny
params), every stage run in this process and recorded in dvc.lock through :mod:`pruning.record` — the path the flow
takes, so DVC sees exactly what ``dvc repro`` would leave — then committed as the baseline. Built once per test run
and shared by the xdist workers (a file lock in the session's shared temporary directory); a test that changes
anything works on its own copy (:func:`copy_repo`: git history, DVC cache and outputs included).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import REPO, write_params

STATUS = "git-status-after-the-run.txt"  # beside the repository: what the run left for git, before the commit
SECONDS = "stage-seconds.json"  # beside the repository: each stage function's seconds in the run, timed from outside


def git(*args: str, cwd: Path) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout


def init_repo(root: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A git + DVC repository at ``root`` with the shipped dvc.yaml, .gitignore and weights/, this checkout's pruning/
    and the tiny params (plus ``overrides``), committed."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "pruning", root / "pruning", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "weights", root / "weights")
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    write_params(root, overrides)
    git("init", "-q", cwd=root)
    git("config", "user.email", "t@example.com", cwd=root)
    git("config", "user.name", "t", cwd=root)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    git("add", "-A", cwd=root)
    git("commit", "-qm", "init", cwd=root)
    return root


def run_recorded(root: Path) -> dict[str, float]:
    """Every stage of the table, in this process, each recorded in dvc.lock as the flow records it. Returns each
    stage function's seconds, timed from outside it."""
    from pruning.config import load_config
    from pruning.record import recording
    from pruning.stages import STAGES

    cfg = load_config(root / "params.yaml")
    seconds = {}
    for stage in STAGES:
        with recording(root) as dvc:
            start = time.perf_counter()
            stage.fn(cfg, root)
            seconds[stage.name] = time.perf_counter() - start
            dvc.commit(stage.name)
    return seconds


def build(root: Path) -> None:
    init_repo(root)
    (root.parent / SECONDS).write_text(json.dumps(run_recorded(root)))
    (root.parent / STATUS).write_text(git("status", "--porcelain", "--untracked-files=all", cwd=root))
    git("add", "-A", cwd=root)
    git("commit", "-qm", "baseline run", cwd=root)


def copy_repo(golden: Path, dest: Path) -> Path:
    """A private copy of the golden repository (its git history, DVC cache and outputs)."""
    shutil.copytree(golden, dest, symlinks=True)
    return dest


def stage_seconds(golden: Path) -> dict[str, float]:
    return json.loads((golden.parent / SECONDS).read_text())


def status_after_run(golden: Path) -> list[str]:
    return (golden.parent / STATUS).read_text().splitlines()
