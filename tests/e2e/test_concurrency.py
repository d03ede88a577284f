"""Two pipeline runs at once on one fresh sqlite MLflow store, then their promotions at once (one of them twice).

What must hold: the store is created once and stays usable (MLflow's own creation is unlocked: two first runs used to
leave a half-migrated store); both runs are logged whole; one run promoted twice at once is one version; and the two
runs' alias decision is made one after the other, so exactly one is champion and the other challenger.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow

from tests.conftest import write_params


def _start(root: Path, store: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    return subprocess.Popen([sys.executable, "-m", "pruning", *args], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _all_succeed(processes: list[subprocess.Popen[str]]) -> list[str]:
    outs = [p.communicate(timeout=600) for p in processes]
    for p, (out, err) in zip(processes, outs, strict=True):
        assert p.returncode == 0, out + err
    return [out for out, _ in outs]


def test_two_first_runs_at_once_share_one_store_and_get_one_champion_decision(finished, tmp_path):
    store = tmp_path / "shared" / "mlflow.db"
    workspaces = []
    for name in ("a", "b"):
        root = tmp_path / name
        for sub in ("data", "models", "reports"):
            shutil.copytree(finished / sub, root / sub)
        # one shipped model for both (auto decides by timing: under load one run shipped fp32, the other INT8, whose
        # accuracy then beat it, and the first champion rightly lost its alias: no challenger)
        write_params(root, {"tracking": {"enabled": True, "experiment": "concurrent"}, "evaluate": {"ship": "int8"}})
        workspaces.append(root)

    _all_succeed([_start(root, store, "evaluate") for root in workspaces])  # both create / open the store at once
    run_a, run_b = (json.loads((root / "reports" / "mlflow_run.json").read_text())["run_id"] for root in workspaces)
    assert run_a and run_b and run_a != run_b

    # run a promoted twice at the same moment as run b
    outs = _all_succeed([_start(workspaces[0], store, "promote", "--run-id", run_a),
                         _start(workspaces[0], store, "promote", "--run-id", run_a),
                         _start(workspaces[1], store, "promote", "--run-id", run_b)])
    assert sum("already registered" in out for out in outs[:2]) == 1, outs

    mlflow.set_tracking_uri(f"sqlite:///{store}")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("concurrent")
    parents = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_id for r in parents) == sorted([run_a, run_b])
    assert {r.info.status for r in parents} == {"FINISHED"}
    versions = client.search_model_versions("name='tiny-int8'")
    assert sorted(v.tags["run_id"] for v in versions) == sorted([run_a, run_b])  # one version per run
    aliases = sorted(a for v in versions for a in client.get_model_version(v.name, v.version).aliases)
    assert aliases == ["challenger", "champion"]
    assert all("decision" in v.tags for v in versions)
