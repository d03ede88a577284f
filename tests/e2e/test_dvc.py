"""Real DVC in a real git repository: the shipped dvc.yaml on the tiny params, starting from the golden run (every
stage already ran and is recorded in dvc.lock, as `dvc repro` leaves it)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import fresh_store, write_params

STAGES = ["prepare", "train", "prune", "finetune", "export", "quantize", "evaluate"]
DVC = (sys.executable, "-m", "dvc")


def _env(cwd: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"}


def _run(*cmd, cwd):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(cwd))
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def _ran(log):
    return [s for s in STAGES if f"Running stage '{s}'" in log]


def test_a_repro_with_nothing_changed_reruns_nothing_and_a_changed_param_reruns_what_follows(golden_repo):
    repo = golden_repo
    again = _run(*DVC, "repro", cwd=repo)
    # prepare runs on every repro (always_changed: data DVC is not told about); unchanged, its command returns at
    # once and its outputs stay byte-identical, so nothing after it reruns
    assert _ran(again) == ["prepare"] and "prepare unchanged" in again
    assert all(f"Stage '{s}' didn't change, skipping" in again for s in STAGES[1:])

    # the user's weights: a file appearing in (or changing in) weights/ makes train, and only train on, out of date
    torch.save({"w": torch.zeros(2)}, repo / "weights" / "mine.pt")
    status = json.loads(_run(*DVC, "status", "--json", cwd=repo))
    assert status["train"] == [{"changed deps": {"weights": "modified"}}]
    assert status["prepare"] == ["always changed"]  # it runs on every repro to fingerprint the data
    (repo / "weights" / "mine.pt").unlink()
    assert json.loads(_run(*DVC, "status", "--json", cwd=repo)) == {"prepare": ["always changed"]}

    shown = json.loads(_run(*DVC, "metrics", "show", "--json", cwd=repo))  # the headline, DVC's only metrics file
    headline = shown[""]["data"]["reports/headline.json"]["data"]
    assert set(headline) == {"gates", "ships", "metric", "drop", "fewer_macs", "faster_b1", "faster_bN"}

    # a param of one stage: that stage and what follows rerun, each its own process, nothing before it (the same with
    # `dvc exp run -S`: tests/e2e/test_dvc_experiments.py)
    write_params(repo, {"quantize": {"calibration_samples": 32}})
    again = _run(*DVC, "repro", cwd=repo)
    assert _ran(again) == ["prepare", "quantize", "evaluate"]
    assert all(f"Stage '{s}' didn't change, skipping" in again for s in ("train", "prune", "finetune", "export"))
    assert json.loads((repo / "reports/quantize.json").read_text())["calibration_samples"] == 32

    _run(*DVC, "plots", "show", "-o", "plots_out", cwd=repo)
    assert (repo / "plots_out" / "index.html").stat().st_size > 1000


def _parent_runs(repo):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")  # no global state for later tests
    experiment = client.get_experiment_by_name("dvc-test")
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def test_a_stage_typed_by_hand_logs_its_run_and_records_itself_in_dvc_lock(golden_repo, mlflow_template):
    """As `dvc repro` does: `dvc status` stays clean after it (evaluate --strict re-measures latency and logs a new
    run: without the record, latency.json and mlflow_run.json would be "modified"; a repro would run it again)."""
    repo = golden_repo
    write_params(repo, {"tracking": {"enabled": True, "experiment": "dvc-test"}})
    fresh_store(mlflow_template, repo)
    _run(sys.executable, "-m", "pruning", "evaluate", "--strict", cwd=repo)
    assert len(_parent_runs(repo)) == 1
    assert json.loads(_run(*DVC, "status", "--json", cwd=repo)) == {"prepare": ["always changed"]}
