"""The search loop: Optuna asks, a trial runs (:mod:`.trial`) on a runner, Optuna is told; every trial and the Pareto
front are written to the search directory; then the front is measured again, alone, and the winner named.

Two objectives: the chosen one (:data:`OBJECTIVES`, maximised) and the shipped model's task metric (in its own
direction); the gates are Optuna's constraints (:func:`.trial.constraints`), so the sampler learns where the feasible
region is and the front holds only trials that passed every gate. The study lives in the search directory (an Optuna
journal file: appends only, safe for several processes), so a search that was killed resumes where it was: finished
trials are kept and count towards ``trials``; a trial that was running when the search died is marked failed and run
again as a new one.

Where trials run is the runner's business (:class:`Runner`): one at a time in this process (:class:`InProcess`), or
as Prefect tasks on Dask (flows/search.py) with ``slots`` trials in flight. Optuna's study stays in this process
only: workers run trials and return their results, they never touch the journal.

Why the front is measured again: trials that run side by side time each other's noise. Every candidate on the front is
timed once more with the evaluate stage's paired protocol (the models alternating in each round, medians over
rounds), with nothing else running, and its gates judged on that measurement; the winner is the best candidate by the
objective that still passes every gate. Both figures are kept (``latency`` and ``remeasured``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pruning.atomic import write_bytes
from pruning.search.config import OBJECTIVES
from pruning.search.space import Values, suggest, trial_config
from pruning.search.trial import TrialResult, TrialSpec, constraints, remeasure, run_trial

if TYPE_CHECKING:
    import optuna

    from pruning.config import Config

log = logging.getLogger(__name__)

STUDY = "search"  # the study's name in its journal
RESULT = "result"  # the user attribute holding a trial's TrialResult


def shipped_metric(result: TrialResult) -> float:
    """The task metric of the model the trial ships (INT8 or pruned fp32, as evaluate decided)."""
    return float(result.metrics[result.shipped]["metric"])


def values(result: TrialResult, objective: str) -> tuple[float, float]:
    """(objective, shipped metric) of a trial, as the trial measured them."""
    report, key = OBJECTIVES[objective]
    return float(getattr(result, report)[key]), shipped_metric(result)


def final_values(result: TrialResult, objective: str) -> tuple[float, float]:
    """(objective, shipped metric) as measured last: the re-measurement alone where there was one."""
    return values(result.final(), objective)


def pareto(results: list[TrialResult], objective: str, greater_is_better: bool) -> list[TrialResult]:
    """The trials that passed every gate and that no other passing trial beats on both objectives."""
    sign = 1.0 if greater_is_better else -1.0
    points = [(r, values(r, objective)) for r in results if r.passed]

    def beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] >= b[0] and sign * a[1] >= sign * b[1] and (a[0] > b[0] or sign * a[1] > sign * b[1])

    return [r for r, v in points if not any(beats(w, v) for _, w in points)]


@dataclass(frozen=True)
class SearchResult:
    trials: list[TrialResult]
    front: list[TrialResult]  # re-measured (:attr:`TrialResult.remeasured`)
    resumed: int  # finished trials found in the journal at the start
    winner: TrialResult | None  # the best re-measured front trial that passes every gate
    seconds: float = 0.0  # wall time of the trial phase (this run's trials, before the front is measured again)


class Runner(Protocol):
    """Where trials run: ``slots`` at once; ``submit`` starts one, ``wait_one`` blocks until one of ``pending`` has
    ended and returns it with its result (or the exception that lost it: a dead worker, say)."""

    slots: int

    def submit(self, spec: TrialSpec) -> Any: ...

    def wait_one(self, pending: list[Any]) -> tuple[Any, TrialResult | BaseException]: ...


class InProcess:
    """One trial at a time, in this process."""

    slots = 1

    def submit(self, spec: TrialSpec) -> Any:
        return spec

    def wait_one(self, pending: list[Any]) -> tuple[Any, TrialResult | BaseException]:
        return pending[0], run_trial(pending[0])


INPUTS = "inputs.json"  # the fingerprint of what the study in the directory searched


def open_study(directory: Path, cfg: Config) -> optuna.Study:
    """The search's Optuna study in ``directory`` (created on first use)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from pruning.task import build_task

    directory.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(directory / "study.journal")))
    better = build_task(cfg.task).greater_is_better
    sampler = optuna.samplers.TPESampler(seed=cfg.seed)  # reads the constraints each trial sets
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    return optuna.create_study(storage=storage, study_name=STUDY, sampler=sampler, load_if_exists=True,
                               directions=["maximize", "maximize" if better else "minimize"])


def _finished(study: optuna.Study) -> list[TrialResult]:
    return [TrialResult.from_dict(t.user_attrs[RESULT]) for t in study.get_trials(deepcopy=False)
            if RESULT in t.user_attrs]


def _write(path: Path, data: Any) -> None:
    write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def _tell(study: optuna.Study, trial: optuna.Trial, result: TrialResult, objective: str) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr(RESULT, result.as_dict())
    for gate, value in constraints(result).items():
        trial.set_constraint(gate, value)
    if result.error is not None:
        study.tell(trial, state=TrialState.FAIL)
        log.info("search: trial %d failed: %s", result.number, result.error)
        return
    study.tell(trial, list(values(result, objective)))
    log.info("search: trial %d %s: %s %.3g, %s %.4g (%.0f s)", result.number,
             "passed every gate" if result.passed else "failed a gate", objective, values(result, objective)[0],
             result.metrics.get("metric_name", "metric"), shipped_metric(result), result.seconds)


def points(results: list[TrialResult]) -> list[dict[str, Any]]:
    """One record per trial that made a model, as measured last: the shipped model's latency at batch 1, its MACs
    (millions), its task metric, and whether it passed every gate — points.json (``dvc plots show`` reads it) and the
    Pareto figure."""
    out = []
    for r in results:
        if r.error is not None or not r.metrics:
            continue
        last = r.final()
        variant = last.shipped
        out.append({"trial": r.number, "passed": last.passed, "latency_ms_b1": last.latency[variant]["latency_ms_b1"],
                    "macs_m": r.metrics[variant]["macs"] / 1e6, "metric": r.metrics[variant]["metric"]})
    return out


def logged_figures(result: TrialResult, objective: str) -> dict[str, float]:
    """What a trial's MLflow run holds as metrics: its seconds and, when it made a model, the objective (as the trial
    measured it, and again alone where the front was re-measured), the shipped metric and the MACs reduction."""
    out = {"seconds": float(result.seconds)}
    if result.error is not None or not result.metrics:
        return out
    out["objective"], out["shipped_metric"] = values(result, objective)
    out["macs_reduction"] = float(result.metrics["macs_reduction"])
    if result.remeasured is not None:
        out["objective_remeasured"] = final_values(result, objective)[0]
    return out


def write_results(directory: Path, objective: str, results: list[TrialResult], front: list[TrialResult],
                  winner: TrialResult | None = None) -> None:
    """trials.json (every trial, in the order they finished), points.json (:func:`points`) and pareto.json (the front,
    the winner once named)."""
    _write(directory / "trials.json", {"objective": objective, "trials": [r.as_dict() for r in results]})
    _write(directory / "points.json", points(results))
    _write(directory / "pareto.json", {"objective": objective, "front": [r.number for r in front],
                                       "winner": winner.number if winner is not None else None})


def preflight(workspace: Path, cfg: Config, fresh: bool = True) -> dict[str, Values]:
    """Everything a search needs checked before its first trial, each failure one line: a space (parsed and checked
    against the configs its keys land in), the dense model and data in the workspace, and (``fresh``; in a DVC
    workspace) the stages that made them up to date with params.yaml."""
    from pruning.search.space import read_space
    from pruning.search.trial import check_fresh, check_inputs

    space = read_space(cfg)
    check_inputs(workspace, cfg)
    if fresh:
        check_fresh(workspace)
    return space


PREVIOUS = ("study.journal", "trials", "trials.json", "pareto.json", "points.json", "pareto.png", INPUTS)


def inputs_fingerprint(workspace: Path, cfg: Config, space: Mapping[str, Values]) -> str:
    """What a search's trials are a function of: the dense model and the data (their bytes), params.yaml as the trials
    see it (every section but how the search runs, where it logs and when it is served) and the space. Not where the
    trials run: a search resumed on a cluster keeps the trials it finished on this machine."""
    import hashlib

    from pruning.fingerprint import source_digest
    from pruning.search.trial import inputs

    files = [source_digest(key, str(workspace / getattr(cfg.paths, key))) for key in inputs()]  # names + contents
    settings = cfg.model_dump(mode="json", exclude={"search", "tracking", "registry", "schedule"})
    for key in space:  # the values the trials sample: an --apply of the winner changes nothing a trial computes
        *parents, leaf = key.split(".")
        section = settings
        for part in parents:
            section = section.get(part, {}) if isinstance(section, dict) else {}
        if isinstance(section, dict):
            section.pop(leaf, None)
    return hashlib.sha256(json.dumps([files, settings, dict(space)], sort_keys=True, default=str).encode()).hexdigest()


def _start_over_if_changed(directory: Path, fingerprint: str) -> None:
    """Resume the study in ``directory`` only if it searched the same inputs; else its trials are of another dense
    model, data, params or space: they are removed (their MLflow runs stay) and a new search starts."""
    import shutil

    record = directory / INPUTS
    if not (directory / "study.journal").exists():
        record.unlink(missing_ok=True)
    elif not record.is_file() or json.loads(record.read_text()).get("fingerprint") != fingerprint:
        log.info("search: the dense model, the data, params.yaml or the space changed since the search in %s: "
                 "starting a new search", directory)
        for name in PREVIOUS:
            path = directory / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    _write(record, {"fingerprint": fingerprint})


def run_search(workspace: str | Path, cfg: Config, space: Mapping[str, Values], directory: str | Path, *,
               trials: int, objective: str, timeout: float | None = None, runner: Runner | None = None,
               threads: int | None = None) -> SearchResult:
    """Run trials until ``trials`` have finished (those of an earlier, killed run of the same inputs included: see
    :func:`inputs_fingerprint`; another search's are removed first) or ``timeout`` seconds
    passed, ``runner.slots`` at a time; write trials.json and pareto.json into ``directory`` after every trial; then
    measure the front again, alone, and name the winner. ``threads``: torch's threads in each trial (None: as is)."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    runner = runner or InProcess()
    workspace, directory = Path(workspace).absolute(), Path(directory).absolute()
    _start_over_if_changed(directory, inputs_fingerprint(workspace, cfg, space))
    study = open_study(directory, cfg)
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # the search died during it
        log.info("search: trial %d was running when the search stopped: marked failed, run again", stale.number)
        study.tell(stale.number, state=TrialState.FAIL)
    results = _finished(study)
    resumed = len(results)
    better = study.directions[1] == StudyDirection.MAXIMIZE  # the task metric's direction
    start = time.monotonic()
    pending: list[tuple[Any, optuna.Trial, TrialSpec]] = []  # (the runner's handle, Optuna's trial, the trial)
    while True:
        while (len(pending) < runner.slots and len(results) + len(pending) < trials
               and (timeout is None or time.monotonic() - start < timeout)):
            trial = study.ask()
            params = suggest(trial, space, cfg)
            log.info("search: trial %d (%d/%d) %s", trial.number, len(results) + len(pending) + 1, trials, params)
            spec = TrialSpec(str(workspace), trial_config(cfg, params), str(directory / "trials" / f"{trial.number:04d}"),
                             trial.number, params, threads)
            pending.append((runner.submit(spec), trial, spec))
        if not pending:
            break
        handle, outcome = runner.wait_one([h for h, _, _ in pending])
        _, trial, spec = pending.pop(next(i for i, (h, _, _) in enumerate(pending) if h is handle))
        if isinstance(outcome, BaseException):  # the runner lost it (a worker died, and died again on the retries)
            outcome = TrialResult(spec.number, spec.params, spec.directory, 0.0,
                                  error=f"the trial's worker failed: {type(outcome).__name__}: {outcome}")
        _tell(study, trial, outcome, objective)
        results.append(outcome)
        write_results(directory, objective, results, pareto(results, objective, better))
    seconds = time.monotonic() - start
    log.info("search: %d trials finished in %.0f s; measuring the front again, alone", len(results), seconds)
    front = [remeasure(r) for r in pareto(results, objective, better)]
    winner = best(front, objective, better)
    by_number = {r.number: r for r in front}
    results = [by_number.get(r.number, r) for r in results]
    write_results(directory, objective, results, front, winner)
    return SearchResult(results, front, resumed, winner, seconds)


def best(front: list[TrialResult], objective: str, greater_is_better: bool) -> TrialResult | None:
    """The front trial that passes every gate on its last measurement with the highest objective (then metric)."""
    sign = 1.0 if greater_is_better else -1.0
    passing = [r for r in front if r.final().passed]
    if not passing:
        return None
    return max(passing, key=lambda r: (final_values(r, objective)[0], sign * final_values(r, objective)[1]))

