from pathlib import Path

import onnx
import pytest

from pruning.config import load_config
from pruning.errors import DataError
from pruning.stages.quantize import run
from tests.conftest import write_params


def test_quantize_writes_a_qdq_model_and_none_copies_the_fp32_one(finished_copy):
    cfg = load_config("params.yaml")
    assert run(cfg).calibration_samples == 64
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(cfg.paths.quantized_onnx).graph.node}
    cfg = load_config(write_params(finished_copy, {"quantize": {"mode": "none"}}))
    assert run(cfg).calibration_samples == 0
    assert Path(cfg.paths.quantized_onnx).read_bytes() == Path(cfg.paths.pruned_onnx).read_bytes()


def test_quantize_names_the_stage_to_run_first_when_its_input_is_missing(finished_copy):
    cfg = load_config("params.yaml")
    Path(cfg.paths.pruned_onnx).unlink()
    with pytest.raises(DataError, match="run the export stage first"):
        run(cfg)
