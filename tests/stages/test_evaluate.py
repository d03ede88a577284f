import json
from pathlib import Path

from pruning.config import load_config
from pruning.stages import BY_NAME
from pruning.stages.evaluate import read_results, run
from tests.conftest import write_params


def test_evaluate_writes_both_metric_files_and_the_verdict(finished_copy):
    cfg = load_config("params.yaml")
    result = run(cfg)
    metrics, latency, gates = read_results(cfg)
    assert (metrics, latency, gates) == (result.metrics, result.latency, result.gates)
    assert metrics.pruned.macs < metrics.dense.macs and metrics.pruned.weight_sparsity is None
    assert "weight_sparsity" not in json.loads(Path(cfg.paths.metrics).read_text())["pruned"]
    assert json.loads(Path(cfg.paths.mlflow_run).read_text()) == {"run_id": None, "experiment": "pruning"}


def test_evaluate_reports_the_zeros_and_storage_of_a_lottery_ticket(finished_copy):
    cfg = load_config(write_params(finished_copy, {"prune": {"method": "lottery", "rounds": 2, "epochs": 2,
                                                             "prune_per_round": 0.5}}))
    for stage in ("prune", "finetune", "export", "quantize"):
        BY_NAME[stage].fn(cfg)
    metrics = run(cfg).metrics
    assert metrics.macs_reduction == 1.0  # dense kernels: the zeros are still multiplied
    assert abs(metrics.pruned.weight_sparsity - 0.75) < 0.01
    assert metrics.pruned.csr_bytes < metrics.pruned.dense_bytes
