"""Command line: one verb per row of :data:`pruning.stages.STAGES`, plus ``run`` (the whole pipeline as the Prefect
flow), ``search`` (the search flow), ``serve``, ``promote`` and ``bench`` (the benchmarks in bench/).

Every verb validates params.yaml once, calls one stage function and maps any PruningError to a one-line message on
stderr and exit code 2 — never a traceback for bad input.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from pruning.acceptance.report import make_console
from pruning.errors import GateFailed, PruningError
from pruning.hf import force_offline
from pruning.stages import BY_NAME, STAGES, Stage


class _PlainFlags:
    """typer prints a type beside every option in --help, ``--strict <bool>`` and ``--help <bool>`` too, though a flag
    takes no value. Our flags carry ``metavar=FLAG`` (nothing); this blanks the one of the ``--help`` typer adds."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class _Group(_PlainFlags, TyperGroup):
    pass


class _Command(_PlainFlags, TyperCommand):
    pass


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Structural pruning pipeline: dense model -> pruned -> INT8 ONNX, with acceptance gates.")
err = make_console(stderr=True)  # piped (CI, `| tee`): not wrapped at 80 columns
out = make_console()
FLAG = ""  # the metavar of a boolean option: rendered as a plain flag, not `--strict <bool>`

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read (the single source of truth).")]
# Set by the flow for its `dvc repro` children, so the summary table is printed once, after the last stage.
SUMMARY_BY_FLOW = "PRUNING_SUMMARY_BY_FLOW"
StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit with code 2 when a gate fails.", metavar=FLAG)]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.", metavar=FLAG)] = False) -> None:
    # Ours says what it does at INFO (an epoch, a pruning step), and more at DEBUG with -v.
    from pruning.progress import configure

    configure("pruning", verbose=verbose)


def _stage(params: Path, fn: Callable[[Any, Path], Any], name: str) -> Any:
    """Validate params, run one stage function, and turn user errors into exit code 2. A stage verb typed by hand in
    a DVC workspace records its stage in dvc.lock (:mod:`pruning.record`), as ``dvc repro`` and the flow do: otherwise
    ``dvc status`` would call the fresh outputs modified and the next ``dvc repro`` would redo the stage."""
    from pruning.config import load_config

    root = params.parent  # the workspace: params.yaml's directory, as for `run` and DVC
    try:
        cfg = load_config(params)
        with _recording(params, name) as recorder:
            start = time.perf_counter()
            result = fn(cfg, root)
            record_timing(name, time.perf_counter() - start, getattr(result, "tracking_seconds", 0.0))
            if recorder is not None:
                _commit(recorder, name)
    except PruningError as exc:
        err.print(f"[red]error:[/] {' '.join(str(exc).split())}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    return result


def _recording(params: Path, stage: str) -> Any:
    """DVC's lock and recorder when this verb records its stage: typed by hand (DVC records the commands of its own
    stages, the flow the stages it runs), for a stage of the table, with the workspace's own params.yaml, in a DVC
    workspace; else nothing."""
    from pruning.record import UNDER_DVC, is_dvc_workspace, recording

    by_hand = not (os.environ.get(UNDER_DVC) or os.environ.get(SUMMARY_BY_FLOW))
    if by_hand and stage in BY_NAME and params.name == "params.yaml" and is_dvc_workspace(params.parent):
        return recording(params.parent)
    return contextlib.nullcontext()


def _commit(recorder: Any, stage: str) -> None:
    try:
        recorder.commit(stage)
    except Exception as exc:  # noqa: BLE001 - the stage ran and wrote its outputs: recording them is extra
        # the first line: DVC's own (a help footer or a hint may follow it)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        err.print(f"[yellow]warning:[/] {stage} ran, but DVC did not record it ({reason}); run `dvc commit {stage}`",
                  highlight=False, soft_wrap=True)


def child_env(**extra: str) -> dict[str, str]:
    """This environment for a child process, with this interpreter's bin/ first on PATH: the `python` of dvc.yaml's
    commands and the `dvc` the children call are then this virtual environment's, activated or not."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def record_timing(stage: str, seconds: float, tracking_seconds: float = 0.0) -> None:
    """Append the time spent inside one stage function to $PRUNING_TIMINGS (JSON lines), when set.

    The overhead benchmark (bench/overhead.py) sets it to measure wall time minus time inside the stages; the
    MLflow logging done at the end of evaluate is tracking overhead, so it is reported apart.
    """
    target = os.environ.get("PRUNING_TIMINGS")
    if target:
        line = {"stage": stage, "seconds": seconds - tracking_seconds, "tracking_seconds": tracking_seconds}
        with open(target, "a") as f:
            f.write(json.dumps(line) + "\n")


def _done(name: str, result: Any) -> None:
    """``<stage> done: key=value, …``: the stage's result, floats to 4 significant digits, what does not apply (None)
    left out."""
    fields = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in vars(result).items()
                       if v is not None)
    out.print(f"[green]{name}[/] done: {fields}", highlight=False)


def _finish(result: Any, strict: bool) -> None:
    from pruning.acceptance.report import print_report

    print_report(result.metrics, result.latency, result.gates, out)
    if strict and not result.gates["passed"]:
        failed = ", ".join(c["name"] for c in result.gates["checks"] if not c["passed"])
        err.print(f"[red]error:[/] {GateFailed(f'gates failed: {failed}')}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)


def _verb(stage: Stage) -> Callable[..., None]:
    """The CLI verb of one row of STAGES: ``python -m pruning <stage> [--params P]`` (+ ``--strict`` if gated)."""
    if stage.gated:
        def gated(params: ParamsOpt = Path("params.yaml"), strict: StrictOpt = False) -> None:
            result = _stage(params, stage.fn, stage.name)
            if os.environ.get(SUMMARY_BY_FLOW) and not strict:  # `run` prints the summary once the flow is done
                return
            _finish(result, strict)
        return gated

    def verb(params: ParamsOpt = Path("params.yaml")) -> None:
        _done(stage.name, _stage(params, stage.fn, stage.name))
    return verb


def _epilog(stage: Stage) -> str:
    """What a verb's --help says beside its line: the params.yaml keys it reads, its inputs and outputs (paths.*), from
    its row of the stage table."""
    def keys(names: tuple[str, ...], prefix: str = "") -> str:
        return ", ".join(prefix + n for n in names) or "nothing"

    return (f"Params: {keys(stage.params)}. Reads: {keys(stage.reads, 'paths.')}. "
            f"Writes: {keys(stage.writes, 'paths.')}.")


for _row in STAGES:
    app.command(name=_row.name, help=_row.help, epilog=_epilog(_row), cls=_Command)(_verb(_row))


def die_with_parent() -> None:
    """``preexec_fn`` of a child process: it gets SIGTERM when its parent dies, even by SIGKILL (Linux
    ``prctl(PR_SET_PDEATHSIG)``), so that killing ``python -m pruning run`` leaves no flow and no Prefect server
    running on. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


FLOW = "flows.pipeline"  # the pipeline's entry point


def _flows(module: str, *args: str) -> None:
    """Run an entry point of flows/ or bench/ in its own process: pruning/ never imports them (see ARCHITECTURE.md).

    The child runs in a process group of its own, and this process passes the signals a user sends on to it, so that
    each reaches it exactly once whether it came from the terminal or from ``kill`` (docs/orchestration.md, "Signals"):
    SIGINT (Ctrl-C, ``kill -INT <pid>``) to the child's whole group, as a terminal sends it; SIGTERM (``docker
    stop``, ``kill``) and SIGUSR1 (stacks, for the flow) to the child; Ctrl-Z stops the child's group, then this
    process, and ``fg``/``bg`` resume both. This process then exits with the child's code. (In the terminal's
    group, a Ctrl-C would reach the child directly and a ``kill -INT`` of this pid would not reach it at all.)"""
    forwarded = {signal.SIGINT: _to_group, signal.SIGTERM: _to_child}
    if module == FLOW:  # SIGUSR1's default would end a child that does not register it (a benchmark): not passed on
        forwarded[signal.SIGUSR1] = _to_child
    with subprocess.Popen([sys.executable, "-m", module, *args], env=child_env(), stdin=subprocess.DEVNULL,
                          preexec_fn=die_with_parent, process_group=0) as child:  # noqa: PLW1509 - no threads yet
        previous = {signum: signal.signal(signum, lambda n, _f, send=send: send(child, n))
                    for signum, send in forwarded.items()}
        previous[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, lambda _n, _f: _suspend(child))
        try:
            code = child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    raise typer.Exit(128 - code if code < 0 else code)  # killed by signal N: 128 + N, as a shell says


def _to_child(child: subprocess.Popen[bytes], signum: int) -> None:
    child.send_signal(signum)


def _to_group(child: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the child has just ended
        os.killpg(child.pid, signum)


def _suspend(child: subprocess.Popen[bytes]) -> None:
    """Ctrl-Z: stop the child's group, then this process (the shell gets its prompt back); resumed (``fg``), resume
    the child's group too."""
    _to_group(child, signal.SIGTSTP)
    handler = signal.signal(signal.SIGTSTP, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTSTP)  # stops here until a SIGCONT
    signal.signal(signal.SIGTSTP, handler)
    _to_group(child, signal.SIGCONT)


@app.command(cls=_Command)
def run(params: ParamsOpt = Path("params.yaml"), strict: StrictOpt = False) -> None:
    """Run the whole pipeline as the Prefect flow (each task a DVC stage: only stale ones rerun), then promote.
    --params names the params.yaml of another workspace (a directory with dvc.yaml): the flow runs there."""
    _flows(FLOW, "--params", str(params), *(["--strict"] if strict else []))


@app.command(cls=_Command)
def search(params: ParamsOpt = Path("params.yaml"),
           apply: Annotated[bool, typer.Option("--apply", help="Write the winner's values into params.yaml (then "
                                               "`dvc repro` makes the winner's model).", metavar=FLAG)] = False) -> None:
    """Search params.yaml's search.space for the best model that passes every gate (Optuna; trials as Prefect tasks
    on Dask), re-measure the Pareto front alone, log to MLflow, promote the winner by the registry rules."""
    _flows("flows.search", "--params", str(params), *(["--apply"] if apply else []))


@app.command(cls=_Command)
def serve() -> None:
    """Serve the pipeline on params.yaml's schedule.cron (and the search on schedule.search_cron) as Prefect
    deployments (needs PREFECT_API_URL)."""
    _flows("flows.deploy")


@app.command(cls=_Command)
def promote(run_id: Annotated[str, typer.Option("--run-id", help="MLflow parent run of a pipeline run.")],
            params: ParamsOpt = Path("params.yaml")) -> None:
    """Register a run's INT8 model; move 'champion' only if every gate passed and it beats the champion."""
    from pruning.errors import params_errors
    from pruning.tracking import promote as register

    def promote_run(cfg: Any, root: Path) -> Any:
        with params_errors("registry"):
            return register(run_id, cfg, root)

    result = _stage(params, promote_run, "promote")
    out.print(f"registry: {result.model_name} v{result.version} -> {result.alias or 'no alias'} ({result.reason})",
              highlight=False)


@app.command(cls=_Command, context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def bench(ctx: typer.Context,
          name: Annotated[str, typer.Argument(help="A benchmark of bench/; `list` lists them.")],
          ) -> None:
    """Run a benchmark of bench/ (figures, not tests); the remaining arguments go to it (--help lists them)."""
    if name == "list" and (Path.cwd() / "bench" / "__main__.py").is_file():
        _flows("bench")
    if not (Path.cwd() / "bench" / f"{name}.py").is_file():
        err.print(f"[red]error:[/] no benchmark {name!r} in {Path.cwd() / 'bench'} (run from the repository root)",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    _flows(f"bench.{name}", *ctx.args)


def main() -> None:
    """Console-script entry point. Nothing is downloaded at run time: the Hugging Face hub is offline for every
    command and the processes it starts (DVC's stages, the flow, a search's workers)."""
    force_offline()
    app()
