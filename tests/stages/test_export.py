import json
from pathlib import Path

import pytest

from pruning.config import load_config
from pruning.errors import ConfigError
from pruning.stages.export import run
from tests.conftest import write_params


def test_export_writes_both_models_within_the_parity_tolerance(finished_copy):
    cfg = load_config("params.yaml")
    for path in (cfg.paths.dense_onnx, cfg.paths.pruned_onnx):
        Path(path).unlink()
    result = run(cfg)
    assert result.parity_max_abs <= cfg.export.parity_atol * 10 and result.parity_score <= 1.0
    assert Path(cfg.paths.dense_onnx).stat().st_size > Path(cfg.paths.pruned_onnx).stat().st_size
    assert json.loads(Path(cfg.paths.export_report).read_text())["parity_samples"] == 64


def test_export_publishes_nothing_and_names_the_key_when_parity_fails(finished_copy):
    cfg = load_config(write_params(finished_copy, {"export": {"parity_atol": 1e-12, "parity_rtol": 0.0}}))
    before = {p: Path(p).stat().st_mtime_ns for p in (cfg.paths.dense_onnx, cfg.paths.pruned_onnx)}
    with pytest.raises(ConfigError, match=r'Invalid "export.parity_atol": the dense model\'s ONNX export differs from torch '
                                         r'beyond atol 1e-12 \+ rtol 0'):
        run(cfg)
    assert {p: Path(p).stat().st_mtime_ns for p in before} == before
