"""The pipeline as a Prefect flow: one task per stage, DVC deciding what is stale and recording every output, then promote.

DVC is the one record of what is stale and of every artifact's version. Each task asks DVC whether its stage is stale
(``Repo.status``, the check ``dvc repro`` makes), runs the stage function if it is, then records the result with
``Repo.commit`` — which writes the same dvc.lock entry and fills the same cache as ``dvc repro`` — all through
:mod:`pruning.record`, the one path that records a stage. So this flow and a plain ``dvc repro`` can never disagree,
and a rerun with unchanged inputs recomputes nothing.

Why in this process and not ``dvc repro --single-item`` per task: each of those is two fresh interpreters (DVC, then the
stage's ``python -m pruning``, which imports torch) per stage, more than the stages' own work on the default run
(bench/overhead.py measures it). The stage functions are the very ones the dvc.yaml commands call. If the repository's
pruning/ is not byte-identical to the package this process imported, the stage runs as the command dvc.yaml gives it
(``python -m pruning <stage>`` in the repository, its own code), and is recorded here the same way.

Prefect adds the schedule, retries on I/O, logs, and a markdown artifact with the summary and the MLflow run. Tasks pass
nothing but file paths (the DVC outs). Run it with ``python -m pruning run`` (or ``python -m flows.pipeline``).

What the Prefect UI shows is the truth: a run whose gates fail is tagged ``gates:failed`` (else ``gates:passed``) and,
with ``strict``, ends Failed; an interrupted run (Ctrl-C, SIGTERM) ends Crashed — Prefect's own handling, given the
time and the server (flows/server.py) to report it — and the process exits 130 with one line (or dies of the SIGTERM).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The stage functions log to the "pruning" logger; send those records to the Prefect run's logs too. Prefect adds its
# handlers to that logger but leaves its level to the root's (WARNING): the per-epoch and per-step INFO lines, the only
# progress a redirected run shows, would be dropped.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pruning")
logging.getLogger("pruning").setLevel(logging.INFO)

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: E402

import pruning  # noqa: E402
from flows import server  # noqa: E402
from flows.summary import mlflow_markdown, tag_gates  # noqa: E402
from pruning.cli import SUMMARY_BY_FLOW, child_env, record_timing  # noqa: E402
from pruning.stages import STAGES, Stage  # noqa: E402

if TYPE_CHECKING:
    from rich.console import Console

    from pruning.config import Config

PARAMS = "params.yaml"  # dvc.yaml reads params.yaml next to it: the repository root is the workspace

class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message is the stage's own one-line error."""


class GatesFailed(RuntimeError):
    """A strict run's gates failed: the flow run ends Failed. ``result`` is what the flow would have returned."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.md5(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*.py")) if "__pycache__" not in f.parts}


def _runs_same_code(repo: Path) -> bool:
    """True if the repository's pruning/ is the package imported here, file for file (or the repo has none)."""
    theirs = repo / "pruning"
    ours = Path(pruning.__file__).resolve().parent
    return not theirs.is_dir() or theirs.resolve() == ours or _tree_digest(theirs) == _tree_digest(ours)


def _run_child(stage: str, repo: Path) -> None:
    """Run ``python -m pruning <stage>`` in ``repo`` (its own pruning/ then imports first: the command of dvc.yaml, as
    ``dvc repro`` would run it), its output in the task's log; a failure is StageFailed with the stage's own line."""
    out = subprocess.run([sys.executable, "-m", "pruning", stage], env=child_env(**{SUMMARY_BY_FLOW: "1"}), text=True,
                         capture_output=True, check=False, cwd=repo)
    logger = get_run_logger()
    for line in (out.stdout + out.stderr).splitlines():
        if line.strip() and "━" not in line:
            logger.info(line)
    if out.returncode != 0:
        errors = [ln for ln in out.stderr.splitlines() if ln.startswith(("error:", "ERROR"))]
        raise StageFailed(f"stage {stage} failed: {errors[0] if errors else out.stderr.strip()[-500:]}")


def _stage(stage: Stage, repo: Path) -> bool:
    """Run one DVC stage in ``repo`` if DVC says it is stale, and record it (:mod:`pruning.record`); True if it ran.

    In this process when the repository's pruning/ is the package imported here, else in a child process that runs
    the repository's own code; recorded here either way, under DVC's lock held from the check to the record."""
    from pruning.config import load_config
    from pruning.record import Locked, describe, recording

    logger = get_run_logger()
    try:
        with recording(repo) as dvc:
            changes = dvc.stale(stage.name)
            if not changes:
                logger.info("Stage '%s' didn't change, skipping", stage.name)
                return False
            logger.info("Running stage '%s' (%s)", stage.name, describe(changes))
            if _runs_same_code(repo):
                start = time.perf_counter()
                result = stage.fn(load_config(repo / PARAMS), repo)
                record_timing(stage.name, time.perf_counter() - start, getattr(result, "tracking_seconds", 0.0))
            else:
                _run_child(stage.name, repo)
            dvc.commit(stage.name)
    except Locked as exc:
        raise StageFailed(f"stage {stage.name}: {exc}") from None
    return True


def _user_error(exc: BaseException | None) -> bool:
    from pruning.errors import PruningError

    return isinstance(exc, PruningError | StageFailed | GatesFailed)


def _io_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: retry a failure of I/O, never a user error (the same input fails the same way)."""
    return not _user_error(state.result(raise_on_failure=False))


class _NoUserTracebacks(logging.Filter):
    """Prefect logs a failed task or flow run with its traceback; for a user error (bad params, an untraceable model,
    a stage's one-line error) the message is the whole story: keep it, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _user_error(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_user_errors() -> None:
    """Install :class:`_NoUserTracebacks` on Prefect's run loggers (once: every flow module of this package calls it)."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoUserTracebacks) for f in logger.filters):
            logger.addFilter(_NoUserTracebacks())


quiet_user_errors()


def _task(stage: Stage):
    """The Prefect task of one row of STAGES; retries only where the stage does I/O against a service."""

    def run(repo: str) -> bool:
        return _stage(stage, Path(repo))

    run.__name__ = run.__qualname__ = stage.name
    return task(name=stage.name, retries=stage.retries, retry_delay_seconds=[5, 20][: stage.retries] or 0,
                retry_condition_fn=_io_only)(run)


TASKS = [_task(stage) for stage in STAGES]


# registry I/O only; promote is idempotent (pruning/tracking/registry.py), so a retry completes what failed
@task(name="promote", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_io_only)
def promote(run_id: str, repo: str) -> dict[str, Any]:
    from pruning.config import load_config
    from pruning.tracking import promote as register

    return register(run_id, load_config(Path(repo) / PARAMS), repo).__dict__


@flow(name="pruning-pipeline")
def pipeline(repo: str = ".", strict: bool = False) -> dict[str, Any]:
    """prepare -> train -> prune -> finetune -> export -> quantize -> evaluate -> promote, in ``repo``.

    Returns the metrics, the gate verdict, which stages ran and the registry promotion (None if tracking is off).
    The flow run is tagged ``gates:passed`` or ``gates:failed``; with ``strict`` a failing gate raises
    :class:`GatesFailed`, and the flow run ends Failed.
    """
    from pruning.acceptance.metrics import merged
    from pruning.acceptance.report import summary_markdown
    from pruning.config import load_config
    from pruning.stages.common import paths, read_json
    from pruning.stages.evaluate import read_results

    root = Path(repo).absolute()
    cfg = load_config(root / PARAMS)  # validated once, before any stage runs
    ran = {t.name: t(str(root)) for t in TASKS}
    recorded = read_json(paths(cfg, root).mlflow_run, "evaluate")
    run_id = recorded["run_id"]
    promotion = promote(run_id, str(root)) if run_id else None
    metrics, timed, verdict = read_results(cfg, root)
    tag_gates(verdict["passed"])
    create_markdown_artifact(summary_markdown(metrics, timed, verdict, promotion, ran) + mlflow_markdown(recorded, root),
                             key="pruning-summary", description="Dense vs pruned vs INT8, the gate verdicts, the MLflow run")
    result = {"metrics": merged(metrics, timed), "gates": verdict, "ran": ran, "promotion": promotion, "run_id": run_id}
    if strict and not verdict["passed"]:
        failed = ", ".join(c["name"] for c in verdict["checks"] if not c["passed"])
        raise GatesFailed(f"gates failed: {failed}", result)
    return result


def _warm_up(cfg: Config, repo: Path, process: subprocess.Popen[bytes] | None) -> AbstractContextManager[Any]:
    """While Prefect's ephemeral server (launched by :func:`main` before anything heavy is imported) comes up, import
    the stages, open the MLflow store in the background, and return the settings to run the flow under.

    The MLflow store is first needed at the end of the evaluate stage, so importing mlflow and opening the store (~2 s,
    more for a new store) runs in a thread next to the first stages instead of in front of them.
    """
    for stage in STAGES:
        stage.fn  # noqa: B018 - imports the stage's code now, while the server starts
    if cfg.tracking.enabled:
        threading.Thread(target=_warm_up_tracking, args=(cfg.tracking.experiment, repo), daemon=True,
                         name="mlflow-warm-up").start()
    if process is None:
        return nullcontext()
    server.wait(process)
    # Heartbeats let a server mark a flow run crashed when its process dies; this server dies with the process, so
    # nothing would read them, and Prefect waits up to 1 s for its heartbeat thread at the end of every flow run.
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def _warm_up_tracking(experiment: str, repo: Path) -> None:
    """Import mlflow and open the workspace's store (``repo``'s: mlflow.set_tracking_uri also sets
    MLFLOW_TRACKING_URI, which the evaluate stage then reads, so a store opened here elsewhere would take the run);
    on any error do nothing: the evaluate stage meets it again and reports it."""
    from pruning.tracking import warm_up

    try:
        warm_up(experiment, repo)
    except Exception:  # noqa: BLE001 - reported by the evaluate stage, in the flow, with its one-line message
        logging.getLogger(__name__).debug("MLflow warm-up failed", exc_info=True)


def _one_run_per_workspace(repo: Path) -> Any:
    """Hold the workspace's run lock until this process exits (the OS drops it on a kill); None if another run holds
    it. Two flows in one workspace would run the same stages on the same files; DVC's own lock, held per stage, cannot
    stop the second from starting between two stages. The lock lives in the DVC repository's .dvc/tmp (the workspace's
    or, for a workspace in a subdirectory such as examples/<name>, the nearest above it), one per workspace."""
    import filelock

    dvc_root = next((d for d in (repo, *repo.parents) if (d / ".dvc").is_dir()), None)
    if dvc_root is None:  # not in a DVC repository: DVC reports that itself, with its own message
        return nullcontext()
    where = dvc_root / ".dvc" / "tmp"
    where.mkdir(exist_ok=True)
    inside = repo.relative_to(dvc_root).as_posix()
    name = "pruning-run.lock" if inside == "." else f"pruning-run-{inside.replace('/', '--')}.lock"
    guard = filelock.FileLock(str(where / name), timeout=0)
    try:
        guard.acquire()
    except filelock.Timeout:
        return None
    return guard


def main() -> int:
    """Entry point of ``python -m pruning run``: run the flow, print the summary, map failures to exit codes."""
    import faulthandler
    import signal

    from pruning.acceptance.report import make_console

    # A run that looks hung: `kill -USR1 PID` writes every thread's Python stack to stderr and the run goes on
    # (the stdlib's faulthandler, in C: it answers even while a thread holds the GIL in a long call)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    err = make_console(stderr=True)  # not wrapped at 80 columns when piped
    try:
        return _main(err)
    except KeyboardInterrupt:  # Ctrl-C: Prefect has already reported a running flow run Crashed
        # (A SIGTERM is Prefect's too: it reports the run Crashed, then ends this process by that same signal.)
        err.print("[red]error:[/] interrupted", highlight=False)
        return 128 + signal.SIGINT  # as a shell reports a process that Ctrl-C ended, without the traceback


def _main(err: Console) -> int:
    import argparse

    from pruning.errors import PruningError

    parser = argparse.ArgumentParser(prog="python -m flows.pipeline")
    parser.add_argument("--strict", action="store_true", help="exit 2 when a gate fails (the flow run ends Failed)")
    parser.add_argument("--params", "-p", default=PARAMS, help="the workspace's params.yaml (its directory, with "
                        "dvc.yaml, is where the pipeline runs)")
    args = parser.parse_args()
    params = Path(args.params)
    if params.name != PARAMS:  # DVC reads params.yaml next to dvc.yaml: another name would be a second truth
        err.print(f"[red]error:[/] --params {params}: the flow runs DVC, which reads the params.yaml next to dvc.yaml; "
                  f"put the file in a workspace directory as params.yaml (with dvc.yaml) and pass that path",
                  highlight=False, soft_wrap=True)
        return 2
    repo = params.parent.absolute()
    if not (repo / "dvc.yaml").is_file():
        err.print(f"[red]error:[/] --params {params}: no dvc.yaml in {repo} (the workspace the pipeline runs in)",
                  highlight=False, soft_wrap=True)
        return 2
    guard = _one_run_per_workspace(repo)
    if guard is None:
        err.print(f"[red]error:[/] another pipeline run is in progress in {repo}; wait for it to finish (or stop it)",
                  highlight=False, soft_wrap=True)
        return 2
    process = server.launch()  # first: it comes up on the other core while this process imports torch and the stages
    try:
        from pruning.config import load_config  # imports every method, hence torch: after the launch

        with _warm_up(load_config(params), repo, process):
            # Everything imported so far lives until exit: keep it out of the collector's full passes (CPython docs,
            # gc.freeze), which otherwise rescan them during the run and again at interpreter shutdown (docs/design.md,
            # "Measured reasons").
            gc.freeze()
            result = pipeline(repo=str(repo), strict=args.strict)
    except GatesFailed as exc:
        result = exc.result  # the flow run ended Failed; the summary below is the same, then exit 2
    except (PruningError, StageFailed, server.ServerFailed) as exc:
        err.print(f"[red]error:[/] {' '.join(str(exc).split())}", highlight=False, soft_wrap=True)
        return 2
    from pruning.acceptance.report import make_console, print_report
    from pruning.stages.evaluate import read_results

    print_report(*read_results(load_config(params), repo))
    if result["promotion"]:
        p = result["promotion"]
        make_console().print(f"registry: {p['model_name']} v{p['version']} -> {p['alias'] or 'no alias'} ({p['reason']})",
                             highlight=False)
    gc.freeze()  # the run's objects too: interpreter shutdown need not collect them one by one
    if args.strict and not result["gates"]["passed"]:
        err.print("[red]error:[/] gates failed", highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
