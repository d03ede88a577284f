"""`python -m pruning search` end to end: Optuna's trials as Prefect tasks on a real two-worker local Dask cluster,
the front measured again alone, the search and its trials in MLflow, the winner through the registry rules, and
`--apply` + `dvc repro` making exactly the winner's model."""

import json
import os
import subprocess
import sys

import mlflow
import yaml

from tests.e2e.conftest import prefect_home

SPACE = {"prune.ratio": [0.25, 0.5],  # a quarter of the channels misses the 2x MACs gate: passing and failing trials
         "finetune.distill.alpha": {"low": 0.5, "high": 0.9}}


def test_a_search_on_two_dask_workers_names_a_winner_that_apply_and_dvc_repro_reproduce(ran_repo, tmp_path_factory,
                                                                                        prefect_template):
    repo = ran_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["search"] = {"trials": 4, "workers": 2, "objective": "macs_reduction", "space": SPACE}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(prefect_home(prefect_template, tmp_path_factory.mktemp("prefect") / "home"))
    out = subprocess.run([sys.executable, "-m", "pruning", "search", "--apply", "--params", str(repo / "params.yaml")],
                         cwd=tmp_path_factory.mktemp("elsewhere"), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "winner trial" in out.stdout

    directory = repo / "reports" / "search"
    trials = json.loads((directory / "trials.json").read_text())["trials"]
    assert sorted(t["number"] for t in trials) == [0, 1, 2, 3] and all(t["error"] is None for t in trials)
    for t in trials:  # every trial judged by the gates on its own reports
        assert t["passed"] == (t["metrics"]["macs_reduction"] >= 2.0) == (t["params"]["prune.ratio"] == 0.5)
    pareto = json.loads((directory / "pareto.json").read_text())
    by_number = {t["number"]: t for t in trials}
    winner = by_number[pareto["winner"]]
    assert pareto["winner"] in pareto["front"] and all(by_number[n]["remeasured"] is not None for n in pareto["front"])
    assert winner["remeasured"]["passed"] and winner["remeasured"]["latency"]["dense"]["latency_ms_b1"] > 0
    assert (directory / "pareto.png").stat().st_size > 10_000

    # MLflow: the search's parent run, a nested run per trial, the winner's pipeline run promoted (the first champion)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("flow-test").experiment_id
    runs = client.search_runs([experiment])
    search_run = next(r for r in runs if r.data.tags.get("kind") == "search")
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == search_run.info.run_id]
    assert sorted(int(r.data.tags["trial"]) for r in nested) == [0, 1, 2, 3]
    assert {r.data.tags["trial"]: r.data.tags["gates"] for r in nested} == {
        str(n): "passed" if (t["remeasured"] or t)["passed"] else "failed" for n, t in by_number.items()}
    assert {"pareto.png", "trials.json", "pareto.json"} <= {a.path for a in client.list_artifacts(search_run.info.run_id)}
    pipeline_run = next(r for r in runs if r.data.tags.get("search_run_id") == search_run.info.run_id)
    assert pipeline_run.data.tags["search_trial"] == str(winner["number"])
    champion = client.get_model_version_by_alias("tiny-int8", "champion")
    assert champion.tags["run_id"] == pipeline_run.info.run_id

    # --apply wrote the winner's values; dvc repro then makes the winner's model: its metrics.json, byte for byte
    applied = yaml.safe_load((repo / "params.yaml").read_text())
    assert applied["prune"]["ratio"] == winner["params"]["prune.ratio"]
    assert applied["finetune"]["distill"]["alpha"] == winner["params"]["finetune.distill.alpha"]
    repro = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=600)
    assert repro.returncode == 0, repro.stderr[-3000:]
    assert (repo / "reports/metrics.json").read_bytes() == (directory / "trials" / f"{winner['number']:04d}" /
                                                             "reports/metrics.json").read_bytes()
