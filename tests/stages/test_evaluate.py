import json
from pathlib import Path

from pruning.config import load_config
from pruning.stages.evaluate import read_results, run


def test_evaluate_writes_both_metric_files_and_the_verdict(finished_copy):
    cfg = load_config("params.yaml")
    result = run(cfg)
    metrics, latency, gates = read_results(cfg)
    assert (metrics, latency, gates) == (result.metrics, result.latency, result.gates)
    assert metrics.pruned.macs < metrics.dense.macs and metrics.pruned.weight_sparsity is None
    assert "weight_sparsity" not in json.loads(Path(cfg.paths.metrics).read_text())["pruned"]
    assert json.loads(Path(cfg.paths.mlflow_run).read_text()) == {"run_id": None, "experiment": "pruning"}
