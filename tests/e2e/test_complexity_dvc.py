"""prune.method: complexity_aware through `dvc repro` (real DVC, real MLflow): it trains with gates, removes units and
blocks, and the result goes through fine-tune, export, quantize, evaluate and the gates like any pruned model."""

import json
import sys

import pytest
import yaml

from tests.conftest import TINY, merge
from tests.e2e.test_dvc import _run, repo  # noqa: F401 - repo is a fixture

pytestmark = pytest.mark.e2e


def test_dvc_repro_runs_complexity_aware_training_and_logs_its_epochs(repo):  # noqa: F811
    import mlflow

    from pruning.checkpoint import load_model

    params = merge(TINY, {"prune": {"method": "complexity_aware", "epochs": 6, "warmup_epochs": 1, "strength": 20.0,
                                    "theta_lr": 0.3, "patience": 1},
                          "tracking": {"enabled": True, "experiment": "dvc-test"}})
    params["gates"] = {"macs": {"metric": "macs_reduction", "op": ">=", "threshold": 1.3},
                       "parity": TINY["gates"]["parity"]}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(sys.executable, "-m", "dvc", "repro", cwd=repo)
    prune = json.loads((repo / "reports/prune.json").read_text())
    assert prune["method"] == "complexity_aware" and prune["start"] == "scratch"
    assert len(prune["epochs"]) == 6 and prune["undecided_at_end"] <= 0.5
    assert prune["edits"] and set(prune["edits"]) <= {"channels", "blocks"}
    assert any(r["found"] < r["dense"] for r in prune["structure"])  # units removed
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["macs_reduction"] >= 1.3
    assert json.loads((repo / "reports/gates.json").read_text())["passed"] is True
    model, record = load_model(repo / "models/pruned.pt", params["model"]["arch"])  # weights_only, edits replayed
    assert record["edits"] and sum(p.numel() for p in model.parameters()) == prune["pruned_params"]
    # MLflow: the prune stage's run holds one point per epoch of the training curves
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    experiment = client.get_experiment_by_name("dvc-test")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.mlflow.runName = 'prune'")
    for key in ("live_macs", "expected_macs", "units_alive", "blocks_alive", "strength", "test_accuracy"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2, 3, 4, 5, 6], key
    live = [m.value for m in client.get_metric_history(run.info.run_id, "live_macs")]
    assert live[-1] < live[0]
