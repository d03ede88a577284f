"""`python -m pruning search` end to end, one search in three launches: its first trials as Prefect tasks on a
two-worker local Dask cluster (the front measured again alone, the search and its trials in MLflow, the winner through
the registry rules); then more trials on a real Dask cluster (a `dask scheduler` and two `dask worker` processes on
127.0.0.1) where one worker is SIGKILLed mid-trial and then the search itself; the rerun resumes, logs to an MLflow
server on a real PostgreSQL (as docker/compose.yaml deploys it), and `--apply` + `dvc repro` make exactly the winner's
model. One test, because every launch costs a Prefect server, a cluster and
the workers' imports."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import yaml

from tests.conftest import merge
from tests.e2e.conftest import mlflow_server, prefect_server

SPACE = {"prune.ratio": [0.25, 0.5],  # a quarter of the channels misses the 2x MACs gate: passing and failing trials
         "finetune.distill.alpha": {"low": 0.5, "high": 0.9}}
QUICK = {"prune": {"iterative_steps": 1}, "finetune": {"epochs": 1}}  # what every trial here runs: short


def _search_params(repo: Path, search: dict) -> dict:
    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), QUICK)
    params["search"] = search
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def _wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"exited {process.returncode} before {what}: {(out + err)[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _kill_hard(command: subprocess.Popen) -> None:
    """SIGKILL the search itself: the flow process `python -m pruning search` runs in a process group of its own (and
    its local Dask cluster with it), then the command. Killing the command alone sends the flow a SIGTERM, which it
    answers cleanly, telling a trial that finishes meanwhile: not the crash this test means."""
    children = Path(f"/proc/{command.pid}/task/{command.pid}/children").read_text().split()
    for child in map(int, children):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)
    command.kill()


def _started(directory: Path) -> set[int]:
    return {int(d.name) for d in (directory / "trials").glob("*") if (d / "params.yaml").is_file()}


def _in_flight(directory: Path) -> set[int]:
    """Trials that have started (their params written) and not finished (no gates yet)."""
    return {n for n in _started(directory) if not (directory / "trials" / f"{n:04d}" / "reports/gates.json").is_file()}


def _told(directory: Path) -> list[dict]:
    return json.loads((directory / "trials.json").read_text())["trials"]


def _clean(out: str) -> None:
    assert "Traceback" not in out, out[out.index("Traceback") - 2000:][:5000]


def _local_phase(repo: Path, env: dict, directory: Path) -> None:
    """Four trials on a local cluster of two workers, tracking on."""
    _search_params(repo, {"trials": 4, "workers": 2, "objective": "macs_reduction", "space": SPACE})
    out = subprocess.run([sys.executable, "-m", "pruning", "search", "--params", str(repo / "params.yaml")],
                         cwd=repo.parent, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    _clean(out.stderr)
    assert "winner trial" in out.stdout
    trials = _told(directory)
    assert sorted(t["number"] for t in trials) == [0, 1, 2, 3] and all(t["error"] is None for t in trials)
    for t in trials:  # every trial judged by the gates on its own reports, on a worker of the local cluster
        assert t["passed"] == (t["metrics"]["macs_reduction"] >= 2.0) == (t["params"]["prune.ratio"] == 0.5)
        assert t["worker"].startswith("tcp://127.0.0.1:")
    pareto = json.loads((directory / "pareto.json").read_text())
    by_number = {t["number"]: t for t in trials}
    winner = by_number[pareto["winner"]]
    assert pareto["winner"] in pareto["front"] and all(by_number[n]["remeasured"] is not None for n in pareto["front"])
    assert winner["remeasured"]["passed"] and winner["remeasured"]["latency"]["dense"]["latency_ms_b1"] > 0
    assert (directory / "pareto.png").stat().st_size > 10_000

    # MLflow: the search's parent run, a nested run per trial, the winner's pipeline run promoted (the first champion)
    _logged(mlflow.MlflowClient(), by_number, winner["number"])


def _logged(client: mlflow.MlflowClient, by_number: dict[int, dict], winner: int) -> None:
    """The search's parent run, a nested run per trial (none lost) with its gate verdict, the figures as artifacts,
    and the winner's pipeline run promoted: the first champion of this store."""
    runs = client.search_runs([client.get_experiment_by_name("flow-test").experiment_id])
    search_run = next(r for r in runs if r.data.tags.get("kind") == "search")
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == search_run.info.run_id]
    assert {r.data.tags["trial"]: r.data.tags["gates"] for r in nested} == {
        str(n): "passed" if (t["remeasured"] or t)["passed"] else "failed" for n, t in by_number.items()}
    artifacts = {a.path for a in client.list_artifacts(search_run.info.run_id)}
    assert {"pareto.png", "trials.json", "pareto.json", "points.json"} <= artifacts
    pipeline_run = next(r for r in runs if r.data.tags.get("search_run_id") == search_run.info.run_id)
    assert pipeline_run.data.tags["search_trial"] == str(winner)
    assert client.get_model_version_by_alias("tiny-int8", "champion").tags["run_id"] == pipeline_run.info.run_id


def test_a_search_fans_out_on_dask_survives_a_killed_worker_resumes_after_a_kill_and_apply_reproduces_its_winner(
        ran_repo, tmp_path, tmp_path_factory, prefect_template):
    """One Prefect server for the whole test, as a cluster has one: the three launches and the Dask workers report
    to it (PREFECT_API_URL), instead of a server per launch and one per worker."""
    repo, directory, scheduler_file = ran_repo, ran_repo / "reports" / "search", tmp_path / "scheduler.json"
    with (prefect_server(prefect_template, tmp_path_factory.mktemp("prefect") / "home") as url,
          mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as tracking_server):
        env = {**os.environ, "PREFECT_API_URL": url}
        _local_phase(repo, env, directory)  # the default sqlite store; the server starts meanwhile
        _cluster_phases(repo, {**env, "MLFLOW_TRACKING_URI": tracking_server()}, directory, tmp_path, scheduler_file)
    _reproduced(repo, env, directory)


def _cluster_phases(repo: Path, env: dict, directory: Path, tmp_path: Path, scheduler_file: Path) -> None:
    """Two more trials on a real cluster: one worker SIGKILLed mid-trial, then the search; the rerun resumes."""
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                               "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait_for(scheduler_file.is_file, 60, "the scheduler")
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                     "--no-nanny", "--no-dashboard", "--name", f"w{i}"], env=env, cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
        procs += workers
        _search_params(repo, {"trials": 6, "dask_address": address, "objective": "macs_reduction", "space": SPACE})
        command = [sys.executable, "-m", "pruning", "search", "--params", str(repo / "params.yaml")]
        search = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: _in_flight(directory) == {4, 5}, 300, "trials 4 and 5 on the two workers", search)
        workers[0].kill()  # SIGKILL, mid-trial: Dask runs its trial again on the survivor
        # the survivor has finished one of them and runs the other (or trial 6): kill the search now
        _wait_for(lambda: len(_told(directory)) == 5, 300, "a fifth trial told", search)
        _kill_hard(search)  # SIGKILL of the search, a trial running
        search.communicate(timeout=60)
        told = {t["number"] for t in _told(directory)}
        lost = _started(directory) - told  # running when the search died: marked failed, never counted
        assert len(told) == 5 and {0, 1, 2, 3} < told and lost
        stamps = {p: p.stat().st_mtime_ns for n in told
                  for p in (directory / "trials" / f"{n:04d}").glob("models/finetuned.pt")}

        rerun = subprocess.run([*command, "--apply"], env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        _clean(rerun.stderr)
        assert all(f"trial {n} was running when the search stopped" in rerun.stdout + rerun.stderr for n in lost)
        trials = _told(directory)
        assert len(trials) == 6 and all(t["error"] is None for t in trials)
        numbers = {t["number"] for t in trials}
        assert told <= numbers and not lost & numbers
        assert len({t["worker"] for t in trials if t["number"] >= 4}) == 1  # the survivor ran every later trial
        assert len(stamps) == len(told)  # finished trials kept as they were, files untouched
        assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
        by_number = {t["number"]: t for t in trials}
        _logged(mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]), by_number,
                json.loads((directory / "pareto.json").read_text())["winner"])
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)


def _reproduced(repo: Path, env: dict, directory: Path) -> None:
    """--apply wrote the winner's values; dvc repro then makes the winner's model: its metrics.json, byte for byte
    (MLflow was checked above: evaluate logs nothing here)."""
    best = json.loads((directory / "pareto.json").read_text())["winner"]
    winner = next(t for t in _told(directory) if t["number"] == best)
    applied = yaml.safe_load((repo / "params.yaml").read_text())
    assert applied["prune"]["ratio"] == winner["params"]["prune.ratio"]
    assert applied["finetune"]["distill"]["alpha"] == winner["params"]["finetune.distill.alpha"]
    (repo / "params.yaml").write_text(yaml.safe_dump(merge(applied, {"tracking": {"enabled": False}}), sort_keys=False))
    repro = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=600)
    assert repro.returncode == 0, repro.stderr[-3000:]
    assert (repo / "reports/metrics.json").read_bytes() == (directory / "trials" / f"{winner['number']:04d}" /
                                                             "reports/metrics.json").read_bytes()
