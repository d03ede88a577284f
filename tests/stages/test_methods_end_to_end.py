"""Each method other than the default through every stage after prune (fine-tune, export, quantize, evaluate with its
gates, MLflow, the registry), in this process. The orchestration (DVC's commands, the Prefect flow) is tested once,
with the default method (tests/e2e): a method changes what prune writes, not how stages are run or recorded."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from pruning.checkpoint import load_model
from pruning.config import load_config
from pruning.stages import BY_NAME
from pruning.tracking import promote
from tests.conftest import TINY, merge

AFTER_TRAIN = ("prune", "finetune", "export", "quantize", "evaluate")
# the sparse methods, each with a gate on what they promise (zeros) instead of fewer MACs, which they do not give
SPARSE = {
    "unstructured": ({"prune": {"method": "unstructured", "sparsity": 0.8}}, 0.8),
    "lottery": ({"prune": {"method": "lottery", "rounds": 2, "prune_per_round": 0.5, "epochs": 2}}, 0.75),
}


def _params(over: dict, gates: dict) -> dict:
    params = merge(TINY, {**over, "tracking": {"enabled": True, "experiment": "methods"}})
    params["gates"] = {**gates, "parity": TINY["gates"]["parity"]}
    return params


def _write(root: Path, params: dict):
    """params.yaml exactly as given (its gates replace the tiny config's, not added to them), validated."""
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return load_config(root / "params.yaml")


def test_unstructured_then_lottery_report_their_zeros_pass_their_own_gates_and_are_promoted(finished_copy,
                                                                                            mlflow_store):
    promotions = []
    for method, (over, sparsity) in SPARSE.items():
        cfg = _write(finished_copy, _params(over, {"sparse": {"metric": "pruned.weight_sparsity", "op": ">=",
                                                               "threshold": 0.7}}))
        for stage in AFTER_TRAIN[:2]:
            BY_NAME[stage].fn(cfg)
        if method == "unstructured":  # fine-tuning keeps every zeroed weight at zero
            pruned, tuned = load_model(cfg.paths.pruned_model)[0], load_model(cfg.paths.finetuned_model)[0]
            for (name, a), b in zip(pruned.named_parameters(), tuned.parameters(), strict=True):
                if a.dim() > 1:
                    assert torch.all(b[a == 0] == 0), name
            assert any(not torch.equal(a, b) for a, b in zip(pruned.parameters(), tuned.parameters(), strict=True))
        for stage in AFTER_TRAIN[2:]:
            result = BY_NAME[stage].fn(cfg)
        metrics = result.metrics
        assert metrics.pruned.weight_sparsity == pytest.approx(sparsity, abs=0.01)
        assert metrics.pruned.csr_bytes < metrics.pruned.dense_bytes
        assert metrics.macs_reduction == 1.0  # honest: dense kernels multiply the zeros
        assert result.gates["passed"] is True, result.gates
        assert json.loads(Path(cfg.paths.prune_report).read_text())["method"] == method
        run_id = json.loads(Path(cfg.paths.mlflow_run).read_text())["run_id"]
        promotions.append(promote(run_id, cfg, Path(".")))
    assert promotions[0].alias == "champion" and promotions[1].alias in ("champion", "challenger")
    client = mlflow.MlflowClient()
    prune_runs = client.search_runs([client.get_experiment_by_name("methods").experiment_id], "tags.stage = 'prune'")
    assert {r.data.params["prune.method"] for r in prune_runs} == {"unstructured", "lottery"}


def test_complexity_aware_training_removes_units_and_blocks_and_logs_its_epochs(finished_copy, mlflow_store):
    """It trains with gates from scratch, removes units and blocks, and the result goes through fine-tune, export,
    quantize, evaluate and the gates like any pruned model; its prune run holds one point per epoch."""
    over = {"prune": {"method": "complexity_aware", "epochs": 6, "warmup_epochs": 1, "strength": 20.0,
                      "theta_lr": 0.3, "patience": 1, "retrain_epochs": 2}}
    params = _params(over, {"macs": {"metric": "macs_reduction", "op": ">=", "threshold": 1.3}})
    cfg = _write(finished_copy, params)
    for stage in AFTER_TRAIN:
        result = BY_NAME[stage].fn(cfg)
    prune = json.loads(Path(cfg.paths.prune_report).read_text())
    assert prune["method"] == "complexity_aware" and prune["start"] == "scratch"
    assert len(prune["epochs"]) == 6 and prune["undecided_at_end"] <= 0.5
    assert len(prune["retrain"]) == 2  # the found structure trained anew
    assert prune["edits"] and set(prune["edits"]) <= {"channels", "blocks"}
    assert any(r["found"] < r["dense"] for r in prune["structure"])  # units removed
    assert result.metrics.macs_reduction >= 1.3 and result.gates["passed"] is True
    model, record = load_model(cfg.paths.pruned_model, params["model"]["arch"])  # weights_only, edits replayed
    assert record["edits"] and sum(p.numel() for p in model.parameters()) == prune["pruned_params"]
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("methods")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.mlflow.runName = 'prune'")
    for key in ("live_macs", "expected_macs", "units_alive", "blocks_alive", "strength", "test_accuracy"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2, 3, 4, 5, 6], key
    live = [m.value for m in client.get_metric_history(run.info.run_id, "live_macs")]
    assert live[-1] < live[0]
