"""Command line: one verb per stage, plus ``run`` (the whole pipeline through ``dvc repro``).

Every verb validates params.yaml once, calls one stage function and maps any PruningError to a one-line message on
stderr and exit code 2 — never a traceback for bad input.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
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
# Set by the flow for its `dvc repro` children, so the summary table is printed once, after the last stage.
SUMMARY_BY_FLOW = "PRUNING_SUMMARY_BY_FLOW"
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
        cfg = load_config(params)
        start = time.perf_counter()
        result = fn(cfg)
    except PruningError as exc:
        err.print(f"[red]error:[/] {' '.join(str(exc).split())}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    record_timing(fn.__name__.removeprefix("run_"), time.perf_counter() - start, getattr(result, "tracking_seconds", 0.0))
    return result


def record_timing(stage: str, seconds: float, tracking_seconds: float = 0.0) -> None:
    """Append the time spent inside one stage function to $PRUNING_TIMINGS (JSON lines), when set.

    The overhead benchmark (benchmarks/overhead.py) sets it to measure wall time minus time inside the stages; the
    MLflow logging done at the end of evaluate is tracking overhead, so it is reported apart.
    """
    target = os.environ.get("PRUNING_TIMINGS")
    if target:
        line = {"stage": stage, "seconds": seconds - tracking_seconds, "tracking_seconds": tracking_seconds}
        with open(target, "a") as f:
            f.write(json.dumps(line) + "\n")


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
    if os.environ.get(SUMMARY_BY_FLOW) and not strict:  # `run` prints the summary itself once the flow is done
        return
    _finish(result.metrics, result.gates, strict)


def _flows(module: str, *args: str) -> None:
    """Run a Prefect entry point in its own process: pruning/ never imports prefect or flows (see ARCHITECTURE.md)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    raise typer.Exit(subprocess.run([sys.executable, "-m", module, *args], env=env, check=False).returncode)


@app.command()
def run(strict: StrictOpt = False) -> None:
    """Run the whole pipeline as the Prefect flow (each task a DVC stage: only stale ones rerun), then promote."""
    _flows("flows.pipeline", *(["--strict"] if strict else []))


@app.command()
def serve() -> None:
    """Serve the flow as a Prefect deployment on params.yaml's schedule.cron (needs PREFECT_API_URL)."""
    _flows("flows.deploy")


@app.command()
def promote(run_id: Annotated[str, typer.Option("--run-id", help="MLflow parent run of a pipeline run.")],
            params: ParamsOpt = Path("params.yaml")) -> None:
    """Register a run's INT8 model; move 'champion' only if every gate passed and it beats the champion."""
    from pruning.tracking import promote as register

    result = _stage(params, lambda cfg: register(run_id, cfg))
    out.print(f"registry: {result.model_name} v{result.version} -> {result.alias or 'no alias'} ({result.reason})",
              highlight=False)


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print and write figures (not tests).")
app.add_typer(bench_app, name="bench")


@bench_app.command("criteria")
def bench_criteria(params: ParamsOpt = Path("params.yaml"),
                   quick: Annotated[bool, typer.Option("--quick", help="1 seed, bench.quick_targets, no long regime.")] = False,
                   readme: Annotated[bool, typer.Option(help="Write the table into README.md's Results section.")] = True,
                   ) -> None:
    """Every criterion x MACs target x regime x seed on mnist1d; writes paths.bench_dir/criteria.{json,md,png}."""
    from pruning.bench import run_criteria

    result = _stage(params, lambda cfg: run_criteria(cfg, quick, Path(cfg.paths.bench_dir),
                                                     Path("README.md") if readme else None))
    out.print(result["markdown"], highlight=False)


@bench_app.command("sparse")
def bench_sparse(params: ParamsOpt = Path("params.yaml"),
                 readme: Annotated[bool, typer.Option(help="Write the report into README.md's Results section.")] = True,
                 ) -> None:
    """Unstructured 90 % (CSR size vs dense and vs structured, honest latency) and a lottery ticket, on mnist1d."""
    from pruning.bench_sparse import run_sparse

    result = _stage(params, lambda cfg: run_sparse(cfg, Path(cfg.paths.bench_dir), Path("README.md") if readme else None))
    out.print(result["markdown"], highlight=False)


@bench_app.command("latency")
def bench_latency(params: ParamsOpt = Path("params.yaml"),
                  arch: Annotated[str, typer.Option(help="Comma-separated ImageNet-shape zoo names.")] = (
                      "resnet50,mobilenetv2"),
                  batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,32",
                  target: Annotated[float, typer.Option(help="MACs reduction / speedup target of the pruned variants.")
                                    ] = 2.0,
                  round_to: Annotated[str, typer.Option(help="Channel roundings of the MACs allocation; 'none' for none.")
                                      ] = "none,8,16",
                  step: Annotated[int, typer.Option(help="Channel step of the latency allocation.")] = 16,
                  alloc_batch: Annotated[int, typer.Option(help="Batch size the latency table is measured at.")] = 1,
                  readme: Annotated[bool, typer.Option(help="Write the tables into README.md's Results section.")
                                    ] = True,
                  ) -> None:
    """Dense / pruned by MACs / pruned by latency / +INT8 on ONNX Runtime: latency, speedup, efficiency."""
    from pruning.bench_latency import run_latency

    try:
        batches = [int(b) for b in batch.split(",")]
        roundings = [None if r.strip().lower() == "none" else int(r) for r in round_to.split(",")]
    except ValueError:
        err.print(f"[red]error:[/] Invalid --batch {batch!r} or --round-to {round_to!r} (comma-separated integers)")
        raise typer.Exit(2) from None
    result = _stage(params, lambda cfg: run_latency(cfg, arch.split(","), batches, target, roundings,
                                                    Path(cfg.paths.bench_dir), step, alloc_batch,
                                                    Path("README.md") if readme else None))
    out.print(result["markdown"], highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()
