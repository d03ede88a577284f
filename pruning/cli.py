"""Command line: one verb per stage, plus ``run`` (the whole pipeline through ``dvc repro``).

Every verb validates params.yaml once, calls one stage function and maps any PruningError to a one-line message on
stderr and exit code 2 — never a traceback for bad input.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from pruning.errors import GateFailed, PruningError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Structural pruning pipeline: dense model -> pruned -> INT8 ONNX, with acceptance gates.")
err = Console(stderr=True)
out = Console()

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read (the single source of truth).")]
# Set by `run` for its `dvc repro` child, so the summary table is printed once, after the last stage.
_SUMMARY_ONCE = "PRUNING_SUMMARY_BY_RUN"
StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit with code 2 when a gate fails.")]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)], force=True)
    for noisy in ("torch", "onnx", "onnxruntime", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A user model given as "module:callable" lives in the project, as with `python -m`; the `pruning` console
    # script does not put the working directory on sys.path by itself.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _stage(params: Path, fn: Callable[[Any], Any]) -> Any:
    """Validate params, run one stage function, and turn user errors into exit code 2."""
    from pruning.config import load_config

    try:
        return fn(load_config(params))
    except PruningError as exc:
        err.print(f"[red]error:[/] {' '.join(str(exc).split())}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _done(name: str, result: Any) -> None:
    fields = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in vars(result).items())
    out.print(f"[green]{name}[/] done: {fields}", highlight=False)


@app.command()
def prepare(params: ParamsOpt = Path("params.yaml")) -> None:
    """Load data.source, split it by seed, write the splits (data/)."""
    from pruning.stages.prepare import run_prepare

    _done("prepare", _stage(params, run_prepare))


@app.command()
def train(params: ParamsOpt = Path("params.yaml")) -> None:
    """Train the dense baseline from the zoo or model.arch = module:callable."""
    from pruning.stages.train import run_train

    _done("train", _stage(params, run_train))


@app.command()
def prune(params: ParamsOpt = Path("params.yaml")) -> None:
    """Remove channels/filters with torch-pruning's dependency graph (ratio or MACs target)."""
    from pruning.stages.prune import run_prune

    _done("prune", _stage(params, run_prune))


@app.command()
def finetune(params: ParamsOpt = Path("params.yaml")) -> None:
    """Fine-tune the pruned model, optionally distilling from the dense one."""
    from pruning.stages.finetune import run_finetune

    _done("finetune", _stage(params, run_finetune))


@app.command()
def export(params: ParamsOpt = Path("params.yaml")) -> None:
    """Export dense and pruned models to ONNX; fail unless parity with torch holds."""
    from pruning.stages.export import run_export

    _done("export", _stage(params, run_export))


@app.command()
def quantize(params: ParamsOpt = Path("params.yaml")) -> None:
    """Quantize the pruned ONNX model with ONNX Runtime (static INT8 QDQ by default)."""
    from pruning.stages.quantize import run_quantize

    _done("quantize", _stage(params, run_quantize))


def _finish(metrics: dict[str, Any], verdict: dict[str, Any], strict: bool) -> None:
    from pruning.report import print_report

    print_report(metrics, verdict, out)
    if strict and not verdict["passed"]:
        failed = ", ".join(c["name"] for c in verdict["checks"] if not c["passed"])
        err.print(f"[red]error:[/] {GateFailed(f'gates failed: {failed}')}", highlight=False)
        raise typer.Exit(2)


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"), strict: StrictOpt = False) -> None:
    """Measure dense / pruned / INT8 in ONNX Runtime, write metrics.json, check the gates."""
    from pruning.stages.evaluate import run_evaluate

    result = _stage(params, run_evaluate)
    if os.environ.get(_SUMMARY_ONCE) and not strict:  # `run` prints the summary itself once dvc repro is done
        return
    _finish(result.metrics, result.gates, strict)


@app.command()
def run(params: ParamsOpt = Path("params.yaml"), strict: StrictOpt = False) -> None:
    """Run the whole pipeline with `dvc repro` (only stale stages rerun) and print the summary."""
    from pruning.stages.common import read_json

    if params != Path("params.yaml"):
        err.print("[red]error:[/] run uses dvc.yaml, which reads ./params.yaml; run single stages with --params")
        raise typer.Exit(2)
    cfg = _stage(params, lambda c: c)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", _SUMMARY_ONCE: "1"}
    code = subprocess.run([sys.executable, "-m", "dvc", "repro"], env=env, check=False).returncode
    if code != 0:
        raise typer.Exit(code if code == 2 else 1)
    try:
        _finish(read_json(cfg.paths.metrics, "evaluate"), read_json(cfg.paths.gates, "evaluate"), strict)
    except PruningError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None


def main() -> None:
    """Console-script entry point."""
    app()
