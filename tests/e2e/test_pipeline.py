"""The whole pipeline through its stage functions on the tiny config: real torch-pruning, real ONNX Runtime."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from pruning import checkpoint
from pruning.acceptance.metrics import merged
from pruning.checkpoint import load_model
from pruning.config import load_config
from pruning.counting import count_macs
from pruning.errors import ConfigError
from pruning.runtime.session import predict, session
from pruning.stages.evaluate import read_results
from pruning.stages.evaluate import run as run_evaluate
from pruning.stages.finetune import run as run_finetune
from pruning.stages.prune import run as run_prune

METRIC_KEYS = {"accuracy", "macs", "params", "size_bytes", "latency_ms_b1", "latency_ms_bN"}
TOP_KEYS = {"macs_reduction", "params_reduction", "speedup_b1", "speedup_bN", "accuracy_drop",
            "quantized_accuracy_drop", "parity_max_abs", "parity_score"}


def test_stages_produce_a_smaller_int8_model_that_matches_its_report(golden):
    """The golden run's outputs (every stage, in order, on the tiny config), read as a user would."""
    cfg = load_config(golden / "params.yaml")
    p = cfg.paths.under(golden)
    pruned = json.loads(Path(p.prune_report).read_text())
    assert pruned["macs_reduction"] >= 2.0
    exported = json.loads(Path(p.export_report).read_text())
    assert exported["parity_score"] <= 1.0 and exported["parity_max_abs"] <= 1e-3

    metrics = merged(*read_results(cfg, golden)[:2])  # metrics.json (deterministic) + latency.json (measured)
    timed = json.loads(Path(p.latency_metrics).read_text())
    assert {"speedup_b1", "int8_vs_pruned_speedup_b1", "threads"} <= timed.keys() and "latency_ms_b1" in timed["pruned"]
    assert not any("latency" in k or "speedup" in k for k in json.loads(Path(p.metrics).read_text()))
    for variant in ("dense", "pruned", "quantized"):
        assert metrics[variant].keys() >= METRIC_KEYS
    assert metrics.keys() >= TOP_KEYS
    # the figures are the real ones: MACs recounted from the reloaded model files, sizes from the ONNX files
    dense, _ = load_model(p.dense_model)
    final, record = load_model(p.finetuned_model)
    assert metrics["dense"]["macs"] == count_macs(dense, (1, 8, 8))[0]
    assert metrics["pruned"]["macs"] == count_macs(final, (1, 8, 8))[0]
    assert metrics["macs_reduction"] == pytest.approx(metrics["dense"]["macs"] / metrics["pruned"]["macs"])
    assert metrics["macs_reduction"] >= 2.0
    # (on a model this tiny, INT8 scales and zero points can outweigh the saved weight bytes, so no INT8 < fp32 here)
    assert metrics["pruned"]["size_bytes"] < 0.5 * metrics["dense"]["size_bytes"]
    assert metrics["quantized"]["size_bytes"] < metrics["dense"]["size_bytes"]
    assert 0 <= metrics["parity_max_abs"] <= 1e-4 and 0 <= metrics["parity_score"] <= 1.0
    assert [e["kind"] for e in record["edits"]] == ["channels"] and record["meta"]["stage"] == "finetune"
    # the INT8 model really is quantized and keeps the output shape
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(p.quantized_onnx).graph.node}
    x = np.load(p.test_data)["x"][:5]
    assert predict(session(p.quantized_onnx), x).shape == (5, 10)
    with torch.no_grad():
        assert final(torch.from_numpy(x)).shape == (5, 10)
    gates = json.loads(Path(p.gates).read_text())
    assert gates["passed"] is True and {c["name"] for c in gates["checks"]} == {"macs", "parity"}
    steps = json.loads(Path(p.prune_steps).read_text())
    assert [s["step"] for s in steps] == [0, 1, 2] and steps[0]["macs"] > steps[2]["macs"]


def test_evaluate_reports_a_failing_gate_and_strict_exits_2(finished_copy):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["gates"]["impossible"] = {"metric": "macs_reduction", "op": ">=", "threshold": 1000.0}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config("params.yaml")
    verdict = run_evaluate(cfg).gates
    assert verdict["passed"] is False
    failed = [c for c in verdict["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["impossible"] and failed[0]["value"] < 1000.0
    assert json.loads(Path(cfg.paths.gates).read_text())["passed"] is False

    lenient = subprocess.run([sys.executable, "-m", "pruning", "evaluate"], capture_output=True, text=True)
    assert lenient.returncode == 0, lenient.stderr  # a failing gate is a verdict, not a crash
    assert "FAILED" in lenient.stdout
    strict = subprocess.run([sys.executable, "-m", "pruning", "evaluate", "--strict"], capture_output=True, text=True)
    assert strict.returncode == 2
    assert "gates failed: impossible" in strict.stderr and "Traceback" not in strict.stderr


def test_prune_reaches_a_macs_target_when_given_one(trained_copy):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["prune"].update({"ratio": None, "target_macs_reduction": 3.0, "iterative_steps": 1})
    Path("params.yaml").write_text(yaml.safe_dump(params))
    result = run_prune(load_config("params.yaml"))
    assert 3.0 <= result.macs_reduction < 3.6


def test_prune_removes_blocks_then_channels_and_the_file_reloads(trained_copy):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["prune"].update({"depth_blocks": 1, "ratio": None, "target_macs_reduction": 2.5, "iterative_steps": 1})
    Path("params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config("params.yaml")
    result = run_prune(cfg)
    assert result.macs_reduction >= 2.5  # relative to the dense model, blocks included
    model, record = load_model(cfg.paths.pruned_model)
    blocks = checkpoint.removed_blocks(record)
    assert len(blocks) == 1
    assert not hasattr(model.get_submodule(blocks[0]), "conv1")  # the block became its shortcut
    assert count_macs(model, (1, 8, 8))[0] == pytest.approx(result.pruned_macs)
    steps = json.loads(Path(cfg.paths.prune_steps).read_text())
    assert [s["step"] for s in steps] == [0, 1, 2] and steps[0]["macs"] > steps[1]["macs"] > steps[2]["macs"]
    run_finetune(cfg)  # the block removal survives the fine-tune's save/load round trip
    assert checkpoint.removed_blocks(load_model(cfg.paths.finetuned_model)[1]) == blocks


def test_prune_names_the_key_when_too_many_blocks_are_asked(trained_copy):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["prune"]["depth_blocks"] = 9
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match='Invalid "prune.depth_blocks": cannot remove 9 blocks'):
        run_prune(load_config("params.yaml"))
