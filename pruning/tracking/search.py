"""A search in MLflow: one parent run for the search (its settings, the figure, trials.json and pareto.json), one
nested run per trial (the values it tried, what it measured, its gate verdict). The winner's own pipeline run, the one
the registry promotes, is logged by the evaluate stage's tracking (:func:`pruning.stages.evaluate.track`) and tagged
with the search's run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pruning.tracking.store import flatten, setup, store_errors


def _trial_metrics(trial: dict[str, Any], objective_key: tuple[str, str]) -> dict[str, float]:
    out: dict[str, float] = {"seconds": float(trial["seconds"])}
    if trial.get("error") is not None or not trial.get("metrics"):
        return out
    variant = "quantized" if trial["latency"].get("shipped") == "quantized" else "pruned"
    report, key = objective_key
    out.update({"shipped_metric": float(trial["metrics"][variant]["metric"]),
                "objective": float(trial[report][key]), "macs_reduction": float(trial["metrics"]["macs_reduction"])})
    again = trial.get("remeasured")
    if again is not None:
        source = again if report == "latency" else trial
        out["objective_remeasured"] = float((source["latency"] if report == "latency" else source[report])[key])
    return out


def log_search(experiment: str, root: str | Path, settings: dict[str, Any], trials: list[dict[str, Any]],
               objective_key: tuple[str, str], figure: Any, files: list[Path]) -> str:
    """Log the search's parent run and a nested run per trial; returns the parent run id."""
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
        for trial in trials:
            run = client.create_run(experiment_id, run_name=f"trial-{trial['number']:04d}",
                                    tags={"mlflow.parentRunId": parent.info.run_id})
            verdict = (trial.get("remeasured") or {}).get("passed", trial["passed"])
            client.log_batch(run.info.run_id,
                             metrics=[Metric(k, v, now, 0) for k, v in _trial_metrics(trial, objective_key).items()],
                             params=[Param(k, str(v)[:6000]) for k, v in trial["params"].items()],
                             tags=[RunTag("trial", str(trial["number"])),
                                   RunTag("gates", "passed" if verdict else "failed"),
                                   RunTag("remeasured", str(trial.get("remeasured") is not None).lower()),
                                   *([RunTag("error", trial["error"][:5000])] if trial.get("error") else [])])
            client.set_terminated(run.info.run_id, "FAILED" if trial.get("error") else "FINISHED")
        return parent.info.run_id
