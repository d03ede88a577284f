import json
from pathlib import Path

import onnx
import pytest

from pruning.config import load_config
from pruning.errors import ConfigError, DataError
from pruning.stages.quantize import run
from tests.conftest import write_params


def _report(cfg):
    return json.loads(Path(cfg.paths.quantize_report).read_text())


def test_quantize_writes_a_qdq_model_and_none_copies_the_fp32_one(finished_copy):
    cfg = load_config("params.yaml")
    assert run(cfg).calibration_samples == 64
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(cfg.paths.quantized_onnx).graph.node}
    cfg = load_config(write_params(finished_copy, {"quantize": {"mode": "none"}}))
    assert run(cfg).calibration_samples == 0
    assert Path(cfg.paths.quantized_onnx).read_bytes() == Path(cfg.paths.pruned_onnx).read_bytes()
    assert _report(cfg)["select"] is None and "candidates" not in _report(cfg)


def test_select_auto_times_the_candidates_against_fp32_and_reports_them(finished_copy):
    cfg = load_config(write_params(finished_copy, {"quantize": {"select": "auto"}}))
    assert cfg.quantize.select == "auto"
    result = run(cfg)  # the real timing protocol, with the tiny config's evaluate settings
    report = _report(cfg)
    assert report["select"] == "auto" and report["chosen"] == result.chosen in report["candidates"]
    assert report["int8_faster_than_fp32"] is result.int8_faster_than_fp32
    assert report["fp32_latency_ms_b1"] > 0
    assert report["candidates"]["all"]["excluded_nodes"] == 0  # the tiny ResNet: all, and its residual Adds in fp32
    assert all(c["latency_ms_b1"] > 0 for c in report["candidates"].values())
    assert report["timing"] == {"threads": 1, "batch_size": 1, "warmup": 1, "repeats": 3, "rounds": 1}
    onnx.checker.check_model(cfg.paths.quantized_onnx, full_check=True)


def test_the_fastest_int8_is_published_even_when_fp32_is_faster_and_the_report_says_so(finished_copy):
    def timer(models, x, batch_sizes, threads, protocol, levels=None, desc=None):
        ms = {"fp32": 1.0, "no_elementwise": 2.0}
        return {n: {"latency_ms_b1": ms.get(n, 3.0), "latency_p95_ms_b1": ms.get(n, 3.0)} for n in models}

    cfg = load_config(write_params(finished_copy, {"quantize": {"select": "auto"}}))
    result = run(cfg, timer=timer)
    assert (result.chosen, result.int8_faster_than_fp32) == ("no_elementwise", False)
    report = _report(cfg)
    assert report["int8_faster_than_fp32"] is False and report["chosen"] == "no_elementwise"
    assert report["candidates"]["no_elementwise"]["latency_ms_b1"] == 2.0 and report["fp32_latency_ms_b1"] == 1.0
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(cfg.paths.quantized_onnx).graph.node}


def test_select_all_quantizes_every_operator_without_timing(finished_copy):
    def timer(*args, **kwargs):
        raise AssertionError("select: all times nothing")

    cfg = load_config(write_params(finished_copy, {"quantize": {"select": "all"}}))
    result = run(cfg, timer=timer)
    assert result.chosen is None and _report(cfg)["select"] == "all" and "candidates" not in _report(cfg)
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(cfg.paths.quantized_onnx).graph.node}


def test_an_unknown_select_is_a_config_error_naming_the_key_and_the_choices(in_tmp):
    with pytest.raises(ConfigError, match=r"quantize\.select.*'auto' or 'all'"):
        load_config(write_params(in_tmp, {"quantize": {"select": "fastest"}}))


def test_quantize_names_the_stage_to_run_first_when_its_input_is_missing(finished_copy):
    cfg = load_config("params.yaml")
    Path(cfg.paths.pruned_onnx).unlink()
    with pytest.raises(DataError, match="run the export stage first"):
        run(cfg)
