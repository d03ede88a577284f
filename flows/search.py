"""The search as a Prefect flow: each trial a Prefect task, run by prefect-dask's ``DaskTaskRunner`` — a local Dask
cluster of ``search.workers`` processes (one thread each) or the existing cluster at ``search.dask_address``.

The loop itself (Optuna's study, the Pareto front, the re-measurement alone, the winner) is
:func:`pruning.search.study.run_search`; this flow gives it a runner that keeps ``search.workers`` trials in flight on
Dask, then writes the figure, logs the search to MLflow (a parent run, a nested run per trial), logs the winner's
pipeline run and passes it through the registry rules (``champion`` only if it passes every gate and beats the
champion), and with ``--apply`` writes the winner's values into params.yaml.

A worker that dies during a trial: Dask runs the task again on another worker (its ``allowed-failures``, 3 by default:
a trial that kills every worker it lands on is not retried forever), then the search records the trial failed with
the reason and goes on. Run it with ``python -m pruning search [--apply]`` (or ``python -m flows.search``).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pruning")  # the trials' progress lines in the flow's logs
logging.getLogger("pruning").setLevel(logging.INFO)

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from flows import server  # noqa: E402
from flows.pipeline import quiet_user_errors  # noqa: E402
from pruning.search.trial import TrialResult, TrialSpec, run_trial  # noqa: E402

if TYPE_CHECKING:
    from pruning.config import Config

PARAMS = "params.yaml"
quiet_user_errors()  # a user error (bad space, stale inputs, a search already running) logged in one line


@task(name="trial", cache_policy=NO_CACHE)  # a trial's inputs are its spec; a rerun is the resumed study's business
def trial(spec: TrialSpec) -> TrialResult:
    return run_trial(spec)


class DaskTrials:
    """The search's runner (:class:`pruning.search.study.Runner`): trials as Prefect tasks on the flow's task runner
    (Dask), ``slots`` in flight."""

    def __init__(self, slots: int) -> None:
        self.slots = slots

    def submit(self, spec: TrialSpec) -> Any:
        return trial.with_options(task_run_name=f"trial-{spec.number:04d}").submit(spec)

    def wait_one(self, pending: list[Any]) -> tuple[Any, TrialResult | BaseException]:
        from prefect.futures import as_completed

        done = next(as_completed(pending))
        try:
            return done, done.result()
        except Exception as exc:  # noqa: BLE001 - a lost worker or a bug: one failed trial, not a failed search
            return done, exc


def plan(cfg: Config) -> tuple[int, int | None]:
    """(trials in flight, torch threads in each trial).

    A trial computes what the pipeline computes with its params on this machine (``dvc repro`` after ``--apply`` gives
    the winner's bytes), so it trains with the pipeline's threads: params.yaml's ``threads``, else torch's default
    here, set explicitly because Dask starts its local workers with one (OMP_NUM_THREADS=1). Local workers: the cores
    over those threads unless search.workers says. On a remote cluster the workers keep their own setting unless
    params.yaml sets ``threads``, and the trials in flight are its worker threads unless search.workers says."""
    import torch

    if cfg.search.dask_address:
        return cfg.search.workers or _remote_threads(cfg.search.dask_address), cfg.threads
    per_trial = cfg.threads or torch.get_num_threads()
    return cfg.search.workers or max(1, len(os.sched_getaffinity(0)) // per_trial), per_trial


def _remote_threads(address: str) -> int:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        return max(1, sum(client.nthreads().values()))


def task_runner(cfg: Config, workers: int) -> Any:
    """prefect-dask's runner: the cluster at search.dask_address, else a local one of ``workers`` processes (one
    thread each: one trial at a time per worker; its dashboard on a free port)."""
    from prefect_dask import DaskTaskRunner

    logging.getLogger("distributed").setLevel(logging.WARNING)  # set on its import: a line per worker start and stop
    if cfg.search.dask_address:
        return DaskTaskRunner(address=cfg.search.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": ":0", "silence_logs": logging.WARNING})


@flow(name="pruning-search")
def search(repo: str = ".", apply: bool = False) -> dict[str, Any]:
    """Search params.yaml's ``search.space`` from the pipeline's dense model; return the trials, the front, the winner,
    its MLflow run and promotion, and the params changed by ``apply``. One search at a time per workspace."""
    from pruning.config import load_config
    from pruning.errors import PruningError

    root = Path(repo).absolute()
    cfg = load_config(root / PARAMS)
    guard = _one_search(root / cfg.paths.search_dir)
    if guard is None:
        raise PruningError(f"another search is running in {root}; wait for it to finish (or stop it: a rerun "
                           "resumes it)")
    try:
        return _search(root, cfg, apply)
    finally:
        guard.release()


@flow(name="pruning-search-trials", validate_parameters=False)
def trials(root: Path, cfg: Config, slots: int, threads: int | None) -> Any:
    """The trials, on the Dask runner the search gives this subflow when it starts (:func:`task_runner`, from
    params.yaml): a deployment imports the search flow as it is declared, so the runner is chosen here, at run time,
    not by the caller."""
    from pruning.search.study import preflight, run_search

    return run_search(root, cfg, preflight(root, cfg), root / cfg.paths.search_dir, trials=cfg.search.trials,
                      objective=cfg.search.objective, timeout=cfg.search.timeout, runner=DaskTrials(slots),
                      threads=threads)


def _search(root: Path, cfg: Config, apply: bool) -> dict[str, Any]:
    from pruning.search.study import points
    from pruning.tracking import figures

    directory = root / cfg.paths.search_dir
    slots, threads = plan(cfg)
    result = trials.with_options(task_runner=task_runner(cfg, slots))(root, cfg, slots, threads)
    front = [t.number for t in result.front]
    winner = result.winner
    metric_name = next((t.metrics.get("metric_name") for t in result.trials if t.metrics), "metric")
    figure = figures.search_front(points(result.trials), front, winner.number if winner else None, metric_name)
    figure.savefig(directory / "pareto.png", dpi=110)
    out: dict[str, Any] = {"trials": len(result.trials), "front": front, "winner": winner.as_dict() if winner else None,
                           "resumed": result.resumed, "search_run_id": None, "run_id": None, "promotion": None,
                           "applied": []}
    if cfg.tracking.enabled:
        out.update(_track(cfg, root, directory, result.trials, figure, winner))
    if apply and winner is not None:
        from pruning.search.apply import apply as write_params

        out["applied"] = write_params(root / PARAMS, cfg, winner.params)
    create_markdown_artifact(_summary(out, cfg.search.objective), key="pruning-search",
                             description="The search's winner, its front and what it changed")
    return out


def _track(cfg: Config, root: Path, directory: Path, trials: list[TrialResult], figure: Any,
           winner: TrialResult | None) -> dict[str, Any]:
    from pruning.search.study import logged_figures
    from pruning.search.trial import trial_params
    from pruning.stages.evaluate import track
    from pruning.tracking import promote
    from pruning.tracking.search import log_search

    numbers = [logged_figures(t, cfg.search.objective) for t in trials]
    search_run = log_search(cfg.tracking.experiment, root, cfg.search.model_dump(mode="json"),
                            [t.as_dict() for t in trials], numbers, figure,
                            [directory / "trials.json", directory / "pareto.json", directory / "points.json"])
    if winner is None:
        return {"search_run_id": search_run}
    trial_dir = Path(winner.directory)
    trial_cfg = trial_params(trial_dir).model_copy(update={"tracking": cfg.tracking, "registry": cfg.registry})
    run_id = track(trial_cfg, trial_dir, root, {"search_run_id": search_run, "search_trial": str(winner.number)})
    return {"search_run_id": search_run, "run_id": run_id, "promotion": promote(run_id, cfg, root).__dict__}


def _summary(out: dict[str, Any], objective: str) -> str:
    winner = out["winner"]
    if winner is None:
        return f"# Search\n\n{out['trials']} trials; no trial on the front passed every gate when measured alone.\n"
    lines = [f"# Search\n\n{out['trials']} trials; the front: {out['front']}; the winner: trial {winner['number']} "
             f"({objective}).\n", "| key | value |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in winner["params"].items()]
    if out["promotion"]:
        p = out["promotion"]
        lines.append(f"\nregistry: {p['model_name']} v{p['version']} -> {p['alias'] or 'no alias'} ({p['reason']})")
    return "\n".join(lines) + "\n"


def _one_search(directory: Path) -> Any:
    """The search directory's lock, held by the caller until it exits (the OS drops it on a kill); None if another
    search holds it (two would share one study journal and one set of trial directories)."""
    import filelock

    directory.mkdir(parents=True, exist_ok=True)
    guard = filelock.FileLock(str(directory / ".lock"), timeout=0)
    try:
        guard.acquire()
    except filelock.Timeout:
        return None
    return guard


def main() -> int:
    """Entry point of ``python -m pruning search``: run the flow, print the winner, map failures to exit codes."""
    import argparse
    import signal

    from pruning.acceptance.report import make_console
    from pruning.errors import PruningError

    err, con = make_console(stderr=True), make_console()
    parser = argparse.ArgumentParser(prog="python -m pruning search")
    parser.add_argument("--params", "-p", default=PARAMS, help="the workspace's params.yaml")
    parser.add_argument("--apply", action="store_true", help="write the winner's values into params.yaml")
    args = parser.parse_args()
    params = Path(args.params)
    repo = params.parent.absolute()
    if params.name != PARAMS or not params.is_file():
        err.print(f"[red]error:[/] --params {params}: expected a workspace's params.yaml (a file named params.yaml)",
                  highlight=False, soft_wrap=True)
        return 2
    process = server.launch()  # first: it comes up on the other core while this process imports torch
    try:
        from pruning.config import load_config
        from pruning.search.study import preflight

        cfg = load_config(params)
        preflight(repo, cfg, fresh=False)  # the flow checks the rest (DVC's status) before its first trial
        if process is not None:
            server.wait(process)
        gc.freeze()
        out = search(repo=str(repo), apply=args.apply)
    except KeyboardInterrupt:
        err.print("[red]error:[/] interrupted", highlight=False)
        return 128 + signal.SIGINT
    except (PruningError, server.ServerFailed) as exc:
        err.print(f"[red]error:[/] {' '.join(str(exc).split())}", highlight=False, soft_wrap=True)
        return 2
    winner = out["winner"]
    if winner is None:
        err.print(f"[red]error:[/] search: {out['trials']} trials, none passed every gate when measured alone "
                  f"({repo / cfg.paths.search_dir / 'trials.json'})", highlight=False, soft_wrap=True)
        return 2
    con.print(f"search: {out['trials']} trials; winner trial {winner['number']} {winner['params']} "
              f"({winner['directory']})", highlight=False)
    if out["promotion"]:
        p = out["promotion"]
        con.print(f"registry: {p['model_name']} v{p['version']} -> {p['alias'] or 'no alias'} ({p['reason']})",
                  highlight=False)
    for line in out["applied"]:
        con.print(f"params.yaml: {line}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
