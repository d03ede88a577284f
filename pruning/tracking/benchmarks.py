"""The benchmarks' MLflow runs: one parent run per benchmark (nested runs per pruning run), or one run holding a
report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pruning.tracking.store import flatten, numbers, setup


def log_bench(experiment: str, result: dict[str, Any], artifacts: list[Path]) -> str:
    """One parent run per benchmark, one nested run per pruning run (params: method, regime, target, seed)."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    experiment_id = setup(experiment)
    client = mlflow.MlflowClient()
    name = "bench-criteria" + ("-quick" if result["quick"] else "")
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as parent:
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(result["config"]).items()})
        mlflow.log_dict(result["summary"], "summary.json")
        for path in artifacts:
            mlflow.log_artifact(str(path))
        now = int(time.time() * 1000)
        for rec in result["records"]:
            run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent.info.run_id},
                                    run_name=f"{rec['method']}-{rec['regime']}-{rec['target']:g}x-s{rec['seed']}")
            client.log_batch(run.info.run_id,
                             metrics=[Metric(k, float(rec[k]), now, 0) for k in ("accuracy", "loss", "achieved", "ratio")],
                             params=[Param(k, str(rec[k])) for k in ("method", "regime", "target", "seed")],
                             tags=[RunTag("bench", "criteria")])
            client.set_terminated(run.info.run_id)
        return parent.info.run_id


def log_report(experiment: str, name: str, params: dict[str, Any], report: dict[str, Any], artifacts: list[Path]) -> str:
    """One run holding a benchmark report: its numbers as metrics (flattened names), its files as artifacts."""
    import mlflow

    experiment_id = setup(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(params).items()})
        mlflow.log_metrics(numbers(report))
        for path in artifacts:
            mlflow.log_artifact(str(path))
        return run.info.run_id
