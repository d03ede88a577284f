"""Real DVC in a real git repository: the shipped dvc.yaml on the tiny params."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, TINY, merge, write_params

pytestmark = pytest.mark.e2e
STAGES = ["prepare", "train", "prune", "finetune", "export", "quantize", "evaluate"]


def _run(*cmd, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def _ran(log):
    return [s for s in STAGES if f"Running stage '{s}'" in log]


# the sparse methods, each with a gate on what they promise (zeros) instead of fewer MACs, which they do not give
SPARSE = {
    "unstructured": {"prune": {"method": "unstructured", "sparsity": 0.8}},
    "lottery": {"prune": {"method": "lottery", "rounds": 2, "prune_per_round": 0.5, "epochs": 2}},
}


def sparse_params(method: str) -> dict:
    params = merge(TINY, {**SPARSE[method], "tracking": {"enabled": True, "experiment": "dvc-test"}})
    params["gates"] = {"sparse": {"metric": "pruned.weight_sparsity", "op": ">=", "threshold": 0.7},
                       "parity": TINY["gates"]["parity"]}
    return params


@pytest.fixture
def repo(tmp_path):
    shutil.copytree(REPO / "pruning", tmp_path / "pruning", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "weights", tmp_path / "weights")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    write_params(tmp_path, {"tracking": {"enabled": True, "experiment": "dvc-test"}})
    _run("git", "init", "-q", cwd=tmp_path)
    _run("git", "config", "user.email", "t@example.com", cwd=tmp_path)
    _run("git", "config", "user.name", "t", cwd=tmp_path)
    _run(sys.executable, "-m", "dvc", "init", "-q", cwd=tmp_path)
    _run("git", "add", "-A", cwd=tmp_path)
    _run("git", "commit", "-qm", "init", cwd=tmp_path)
    return tmp_path


def test_dvc_repro_reruns_only_what_changed(repo):
    first = _run(sys.executable, "-m", "dvc", "repro", cwd=repo)
    assert _ran(first) == STAGES
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["macs_reduction"] >= 2.0

    second = _run(sys.executable, "-m", "dvc", "repro", cwd=repo)
    # prepare runs on every repro (always_changed: data DVC is not told about); its outputs are byte-identical, so
    # nothing after it reruns
    assert _ran(second) == ["prepare"]
    assert all(f"Stage '{s}' didn't change, skipping" in second for s in STAGES[1:])

    # the user's weights: a file appearing in (or changing in) weights/ makes train, and only train on, out of date
    torch.save({"w": torch.zeros(2)}, repo / "weights" / "mine.pt")
    status = json.loads(_run(sys.executable, "-m", "dvc", "status", "--json", cwd=repo))
    assert status["train"] == [{"changed deps": {"weights": "modified"}}]
    assert status["prepare"] == ["always changed"]  # it runs on every repro to fingerprint the data
    (repo / "weights" / "mine.pt").unlink()
    assert json.loads(_run(sys.executable, "-m", "dvc", "status", "--json", cwd=repo)) == {"prepare": ["always changed"]}

    shown = _run(sys.executable, "-m", "dvc", "metrics", "show", "--json", cwd=repo)
    assert '"macs_reduction"' in shown and "reports/metrics.json" in shown and "reports/latency.json" in shown

    _run("git", "add", "-A", cwd=repo)
    _run("git", "commit", "-qm", "baseline", cwd=repo)
    exp = _run(sys.executable, "-m", "dvc", "exp", "run", "-S", "prune.ratio=0.6", cwd=repo)
    assert _ran(exp) == ["prepare", "prune", "finetune", "export", "quantize", "evaluate"]
    assert "Stage 'train' didn't change, skipping" in exp
    after = json.loads((repo / "reports/metrics.json").read_text())
    assert after["macs_reduction"] > metrics["macs_reduction"]

    _run(sys.executable, "-m", "dvc", "plots", "show", "-o", "plots_out", cwd=repo)
    assert (repo / "plots_out" / "index.html").stat().st_size > 1000


def _parent_runs(repo):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")  # no global state for later tests
    experiment = client.get_experiment_by_name("dvc-test")
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def test_dvc_repro_logs_one_parent_run_and_reproduces_metrics_bit_identically(repo):
    _run(sys.executable, "-m", "dvc", "repro", cwd=repo)
    first = (repo / "reports/metrics.json").read_text()
    assert len(_parent_runs(repo)) == 1
    _run(sys.executable, "-m", "dvc", "repro", "--force", cwd=repo)  # same data + params, every stage recomputed
    second = (repo / "reports/metrics.json").read_text()
    parents = _parent_runs(repo)
    assert len(parents) == 2
    assert len({r.data.tags["params_hash"] for r in parents}) == 1
    # metrics.json holds everything deterministic and comes back byte for byte; the measured latencies (and the
    # speedups derived from them) live in latency.json, re-measured on every run
    assert first == second
    assert {"accuracy", "macs", "size_bytes"} <= json.loads(first)["quantized"].keys()
    assert "latency_ms_b1" in json.loads((repo / "reports/latency.json").read_text())["quantized"]

    # a stage typed by hand records itself in dvc.lock, as dvc repro does: `dvc status` stays clean (evaluate --strict
    # re-measures latency and logs a new run: without the commit, latency.json and mlflow_run.json would be "modified")
    _run(sys.executable, "-m", "pruning", "evaluate", "--strict", cwd=repo)
    assert len(_parent_runs(repo)) == 3
    status = json.loads(_run(sys.executable, "-m", "dvc", "status", "--json", cwd=repo))
    assert status == {"prepare": ["always changed"]}, status


def test_dvc_repro_runs_unstructured_then_lottery_end_to_end_and_reports_their_zeros(repo):
    for method in ("unstructured", "lottery"):
        (repo / "params.yaml").write_text(yaml.safe_dump(sparse_params(method), sort_keys=False))
        log = _run(sys.executable, "-m", "dvc", "repro", cwd=repo)
        # train up to date (prepare always runs, to fingerprint the data)
        assert _ran(log) == (STAGES if method == "unstructured" else ["prepare", *STAGES[2:]])
        metrics = json.loads((repo / "reports/metrics.json").read_text())
        assert metrics["pruned"]["weight_sparsity"] >= 0.7 and metrics["pruned"]["csr_bytes"] < \
            metrics["pruned"]["dense_bytes"]
        assert metrics["macs_reduction"] == 1.0  # honest: dense kernels multiply the zeros
        assert json.loads((repo / "reports/gates.json").read_text())["passed"] is True
        assert json.loads((repo / "reports/prune.json").read_text())["method"] == method
