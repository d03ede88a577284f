"""`python -m pruning search` end to end: Optuna's trials as Prefect tasks on a real two-worker local Dask cluster,
the front measured again alone, the search and its trials in MLflow, the winner through the registry rules, and
`--apply` + `dvc repro` making exactly the winner's model."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import yaml

from tests.conftest import merge
from tests.e2e.conftest import prefect_home

SPACE = {"prune.ratio": [0.25, 0.5],  # a quarter of the channels misses the 2x MACs gate: passing and failing trials
         "finetune.distill.alpha": {"low": 0.5, "high": 0.9}}
QUICK = {"prune": {"iterative_steps": 1}, "finetune": {"epochs": 1}}  # what every trial here runs: short


def _search_params(repo: Path, search: dict) -> dict:
    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), QUICK)
    params["search"] = search
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def test_a_search_on_two_dask_workers_names_a_winner_that_apply_and_dvc_repro_reproduce(ran_repo, tmp_path_factory,
                                                                                        prefect_template):
    repo = ran_repo
    _search_params(repo, {"trials": 4, "workers": 2, "objective": "macs_reduction", "space": SPACE})
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(prefect_home(prefect_template, tmp_path_factory.mktemp("prefect") / "home"))
    out = subprocess.run([sys.executable, "-m", "pruning", "search", "--apply", "--params", str(repo / "params.yaml")],
                         cwd=tmp_path_factory.mktemp("elsewhere"), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[out.stderr.index("Traceback") - 2000:][:5000]
    assert "winner trial" in out.stdout

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


def _wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"exited {process.returncode} before {what}: {(out + err)[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _in_flight(directory: Path) -> list[Path]:
    """Trial directories whose trial has started (its params written) and not finished (no gates yet)."""
    return [d for d in (directory / "trials").glob("*") if (d / "params.yaml").is_file()
            and not (d / "reports/gates.json").is_file()]


def test_a_search_on_a_real_dask_cluster_survives_a_killed_worker_and_a_killed_search_resumes(
        golden_repo, tmp_path, tmp_path_factory, prefect_template):
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1 (no nanny: a killed worker stays dead). One
    worker is SIGKILLed while both run a trial: Dask runs its trial again on the other, and the search completes.
    Then the search itself is SIGKILLed during a trial: the rerun keeps the finished trials (their files untouched),
    marks the lost one failed and runs new ones to reach the count."""
    repo, scheduler_file = golden_repo, tmp_path / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(prefect_home(prefect_template, tmp_path_factory.mktemp("prefect") / "home"))
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = [subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                               str(scheduler_file)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait_for(scheduler_file.is_file, 60, "the scheduler")
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                     "--no-nanny", "--no-dashboard", "--name", f"w{i}"], env=env, cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
        procs += workers
        _search_params(repo, {"trials": 4, "dask_address": address, "objective": "macs_reduction",
                              "space": SPACE})
        command = [sys.executable, "-m", "pruning", "search", "--params", str(repo / "params.yaml")]
        directory = repo / "reports" / "search"
        search = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: len(_in_flight(directory)) == 2, 300, "two trials in flight", search)
        workers[0].kill()  # SIGKILL, mid-trial: Dask runs its trial again on the survivor
        # the survivor runs one trial at a time: once trial 3 has started, trials 0 to 2 are done; kill the search
        _wait_for(lambda: any(d.name == "0003" for d in _in_flight(directory)), 300, "trial 3 in flight", search)
        stamps = {p: p.stat().st_mtime_ns for p in directory.glob("trials/000[0-2]/models/finetuned.pt")}
        search.kill()
        search.communicate(timeout=60)
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "trial 3 was running when the search stopped" in rerun.stdout + rerun.stderr
        trials = json.loads((directory / "trials.json").read_text())["trials"]
        assert [t["number"] for t in trials] == [0, 1, 2, 4] and all(t["error"] is None for t in trials)
        assert all(t["worker"].startswith("tcp://127.0.0.1:") for t in trials)  # every trial ran on the cluster
        assert len({t["worker"] for t in trials if t["number"] >= 2}) == 1  # after the kill: the survivor alone
        assert len(stamps) == 3  # trials 0 to 2 finished in the killed search, and the rerun left them as they were
        assert {p: p.stat().st_mtime_ns for p in directory.glob("trials/000[0-2]/models/finetuned.pt")} == stamps
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)
