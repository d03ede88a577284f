"""The pipeline as a Prefect flow: one task per stage, each running that DVC stage, then promote.

DVC is the one record of what is stale: a task runs ``dvc repro --single-item <stage>``, which recomputes the stage
only if its deps or params changed, and writes dvc.lock — so this flow and a plain ``dvc repro`` can never disagree,
and a rerun with unchanged inputs recomputes nothing. Prefect adds the schedule, retries on I/O, logs, and a markdown
artifact with the summary. Tasks pass nothing but file paths (the DVC outs).

Run it with ``python -m pruning run`` (or ``python -m flows.pipeline``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from pruning.cli import SUMMARY_BY_FLOW
from pruning.config import load_config
from pruning.stages.common import read_json

PARAMS = "params.yaml"  # dvc.yaml reads ./params.yaml: the flow runs in the repository root


# dvc's advice after each stage, noise in the flow's log
_DVC_HINTS = ("To track the changes with git", "git add dvc.lock", "To enable auto staging", "core.autostage",
              "dvc push")


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message is the stage's own one-line error."""


def _repro(stage: str) -> bool:
    """``dvc repro --single-item stage``; True if the stage ran, False if DVC found it up to date."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           SUMMARY_BY_FLOW: "1"}
    out = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", stage], env=env, text=True,
                         capture_output=True, check=False)
    logger = get_run_logger()
    for line in (out.stdout + out.stderr).splitlines():
        if line.strip() and "━" not in line and not any(hint in line for hint in _DVC_HINTS):
            logger.info(line)
    if out.returncode != 0:
        errors = [ln for ln in out.stderr.splitlines() if ln.startswith(("error:", "ERROR"))]
        raise StageFailed(f"stage {stage} failed: {errors[0] if errors else out.stderr.strip()[-500:]}")
    return f"Running stage '{stage}'" in out.stdout


@task(name="prepare")
def prepare() -> bool:
    return _repro("prepare")


@task(name="train")
def train() -> bool:
    return _repro("train")


@task(name="prune")
def prune() -> bool:
    return _repro("prune")


@task(name="finetune")
def finetune() -> bool:
    return _repro("finetune")


@task(name="export")
def export() -> bool:
    return _repro("export")


@task(name="quantize")
def quantize() -> bool:
    return _repro("quantize")


@task(name="evaluate", retries=2, retry_delay_seconds=[5, 20])  # logs to MLflow: a server may be briefly down
def evaluate() -> bool:
    return _repro("evaluate")


@task(name="promote", retries=3, retry_delay_seconds=[2, 10, 30])  # registry I/O only
def promote(run_id: str) -> dict[str, Any]:
    from pruning.tracking import promote as register

    return register(run_id, load_config(PARAMS)).__dict__


@flow(name="pruning-pipeline")
def pipeline(repo: str = ".") -> dict[str, Any]:
    """prepare -> train -> prune -> finetune -> export -> quantize -> evaluate -> promote, in ``repo``.

    Returns the metrics, the gate verdict, which stages ran and the registry promotion (None if tracking is off).
    """
    os.chdir(repo)
    cfg = load_config(PARAMS)  # validated once, before any stage runs
    ran = {t.name: t() for t in (prepare, train, prune, finetune, export, quantize, evaluate)}
    run_id = read_json(cfg.paths.mlflow_run, "evaluate")["run_id"]
    promotion = promote(run_id) if run_id else None
    metrics, verdict = read_json(cfg.paths.metrics, "evaluate"), read_json(cfg.paths.gates, "evaluate")
    from pruning.report import summary_markdown

    create_markdown_artifact(summary_markdown(metrics, verdict, promotion, ran), key="pruning-summary",
                             description="Dense vs pruned vs INT8 and the gate verdicts")
    return {"metrics": metrics, "gates": verdict, "ran": ran, "promotion": promotion, "run_id": run_id}


def main() -> int:
    """Entry point of ``python -m pruning run``: run the flow, print the summary, map failures to exit codes."""
    import argparse

    from rich.console import Console

    from pruning.errors import PruningError
    from pruning.report import print_report

    parser = argparse.ArgumentParser(prog="python -m flows.pipeline")
    parser.add_argument("--strict", action="store_true", help="exit 2 when a gate fails")
    args = parser.parse_args()
    err = Console(stderr=True)
    try:
        load_config(PARAMS)
        result = pipeline(repo=os.getcwd())
    except (PruningError, StageFailed) as exc:
        err.print(f"[red]error:[/] {' '.join(str(exc).split())}", highlight=False, soft_wrap=True)
        return 2
    print_report(result["metrics"], result["gates"])
    if result["promotion"]:
        p = result["promotion"]
        Console().print(f"registry: {p['model_name']} v{p['version']} -> {p['alias'] or 'no alias'} ({p['reason']})",
                        highlight=False)
    if args.strict and not result["gates"]["passed"]:
        err.print("[red]error:[/] gates failed", highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
