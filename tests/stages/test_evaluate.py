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


def test_a_sequence_length_for_a_model_without_token_inputs_is_one_line_and_writes_nothing(finished_copy):
    import pytest
    import yaml

    from pruning.errors import ConfigError

    params = yaml.safe_load(Path("params.yaml").read_text())
    params["evaluate"]["sequence_length"] = 128
    Path("params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config("params.yaml")
    before = Path(cfg.paths.gates).stat().st_mtime_ns
    with pytest.raises(ConfigError, match='"evaluate.sequence_length": this model has no token input'):
        run(cfg)
    assert Path(cfg.paths.gates).stat().st_mtime_ns == before
