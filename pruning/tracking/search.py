"""A search in MLflow: one parent run for the search (its settings, the figure, trials.json and pareto.json), one
nested run per trial (the values it tried, what it measured, its gate verdict). The winner's own pipeline run, the one
the registry promotes, is logged by the evaluate stage's tracking (:func:`pruning.stages.evaluate.track`) and tagged
with the search's run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pruning.tracking.store import flatten, setup, store_errors


def log_search(experiment: str, root: str | Path, settings: dict[str, Any], trials: list[dict[str, Any]],
               numbers: list[dict[str, float]], figure: Any, files: list[Path]) -> str:
    """Log the search's parent run and a nested run per trial (``trials`` as trials.json holds them, ``numbers`` their
    metrics, in the same order); returns the parent run id."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    experiment_id = setup(experiment, root)
    client = mlflow.MlflowClient()
    name = f"search-{time.strftime('%Y%m%d-%H%M%S')}"
    with store_errors(mlflow.get_tracking_uri()), mlflow.start_run(experiment_id=experiment_id, run_name=name) as parent:
        mlflow.set_tags({"kind": "search", "objective": settings["objective"]})
        mlflow.log_params({f"search.{k}": str(v)[:6000] for k, v in flatten(settings).items()})
        passed = [t for t in trials if (t.get("remeasured") or {}).get("passed", t["passed"])]
        mlflow.log_metrics({"trials": len(trials), "trials_passed": len(passed),
                            "trials_failed_to_run": sum(t.get("error") is not None for t in trials)})
        mlflow.log_figure(figure, "pareto.png")
        for path in files:
            mlflow.log_artifact(str(path))
        now = int(time.time() * 1000)
        for trial, figures in zip(trials, numbers, strict=True):
            run = client.create_run(experiment_id, run_name=f"trial-{trial['number']:04d}",
                                    tags={"mlflow.parentRunId": parent.info.run_id})
            verdict = (trial.get("remeasured") or {}).get("passed", trial["passed"])
            client.log_batch(run.info.run_id,
                             metrics=[Metric(k, v, now, 0) for k, v in figures.items()],
                             params=[Param(k, str(v)[:6000]) for k, v in trial["params"].items()],
                             tags=[RunTag("trial", str(trial["number"])),
                                   RunTag("gates", "passed" if verdict else "failed"),
                                   RunTag("remeasured", str(trial.get("remeasured") is not None).lower()),
                                   *([RunTag("error", trial["error"][:5000])] if trial.get("error") else [])])
            client.set_terminated(run.info.run_id, "FAILED" if trial.get("error") else "FINISHED")
        return parent.info.run_id
