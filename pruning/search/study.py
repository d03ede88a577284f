"""The search loop: Optuna asks, a trial runs (:mod:`.trial`), Optuna is told; every trial and the Pareto front are
written to the search directory.

Two objectives: the chosen one (:data:`OBJECTIVES`, maximised) and the shipped model's task metric (in its own
direction); the gates are Optuna's constraints (:func:`.trial.constraints`), so the sampler learns where the feasible
region is and the front holds only trials that passed every gate. The study lives in the search directory (an Optuna
journal file: appends only, safe for several processes), so a search that was killed resumes where it was: finished
trials are kept and count towards ``trials``; a trial that was running when the search died is marked failed and run
again as a new one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pruning.atomic import write_bytes
from pruning.search.space import Values, suggest, trial_config
from pruning.search.trial import TrialResult, constraints, run_trial

if TYPE_CHECKING:
    import optuna

    from pruning.config import Config

log = logging.getLogger(__name__)

# objective name -> (report, key) of the value maximised; "shipped": the model the gates judge as shipped
OBJECTIVES: dict[str, tuple[str, str]] = {
    "speedup_b1": ("latency", "shipped_speedup_b1"),
    "speedup_bN": ("latency", "shipped_speedup_bN"),
    "macs_reduction": ("metrics", "macs_reduction"),
}
STUDY = "search"  # the study's name in its journal
RESULT = "result"  # the user attribute holding a trial's TrialResult


def shipped_metric(result: TrialResult) -> float:
    """The task metric of the model the trial ships (INT8 or pruned fp32, as evaluate decided)."""
    variant = "quantized" if result.latency.get("shipped") == "quantized" else "pruned"
    return float(result.metrics[variant]["metric"])


def values(result: TrialResult, objective: str) -> tuple[float, float]:
    report, key = OBJECTIVES[objective]
    return float(getattr(result, report)[key]), shipped_metric(result)


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
    front: list[TrialResult]
    resumed: int  # finished trials found in the journal at the start


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
    return [TrialResult(**t.user_attrs[RESULT]) for t in study.get_trials(deepcopy=False) if RESULT in t.user_attrs]


def _write(path: Path, data: Any) -> None:
    write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def run_search(workspace: str | Path, cfg: Config, space: Mapping[str, Values], directory: str | Path, *,
               trials: int, objective: str, timeout: float | None = None) -> SearchResult:
    """Run trials until ``trials`` have finished (those of an earlier, killed run included) or ``timeout`` seconds
    passed; write trials.json and pareto.json into ``directory`` after every trial."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    directory = Path(directory)
    study = open_study(directory, cfg)
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # the search died during it
        log.info("search: trial %d was running when the search stopped: marked failed, run again", stale.number)
        study.tell(stale.number, state=TrialState.FAIL)
    results = _finished(study)
    resumed = len(results)
    better = study.directions[1] == StudyDirection.MAXIMIZE  # the task metric's direction
    start = time.monotonic()
    while len(results) < trials and (timeout is None or time.monotonic() - start < timeout):
        trial = study.ask()
        params = suggest(trial, space, cfg)
        log.info("search: trial %d (%d/%d) %s", trial.number, len(results) + 1, trials, params)
        result = run_trial(workspace, trial_config(cfg, params), directory / "trials" / f"{trial.number:04d}",
                           trial.number, params)
        trial.set_user_attr(RESULT, result.as_dict())
        for gate, value in constraints(result).items():
            trial.set_constraint(gate, value)
        if result.error is not None:
            study.tell(trial, state=TrialState.FAIL)
            log.info("search: trial %d failed: %s", trial.number, result.error)
        else:
            study.tell(trial, list(values(result, objective)))
            log.info("search: trial %d %s: %s %.3g, %s %.4g (%.0f s)", trial.number,
                     "passed every gate" if result.passed else "failed a gate", objective, values(result, objective)[0],
                     result.metrics.get("metric_name", "metric"), shipped_metric(result), result.seconds)
        results.append(result)
        front = pareto(results, objective, better)
        _write(directory / "trials.json", {"objective": objective, "trials": [r.as_dict() for r in results]})
        _write(directory / "pareto.json", {"objective": objective, "front": [r.number for r in front]})
    return SearchResult(results, pareto(results, objective, better), resumed)
