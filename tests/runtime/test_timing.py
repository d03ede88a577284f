"""The one latency-timing protocol."""

import numpy as np
import torch

from pruning.runtime.export import export_onnx
from pruning.runtime.timing import Protocol, latency
from pruning.zoo import build_model


def test_latency_reports_p50_and_p95_per_model_and_batch_and_ranks_a_bigger_model_slower(tmp_path):
    torch.manual_seed(0)
    paths = {}
    for name, widths in (("small", [4, 4, 4]), ("big", [64, 128, 128])):
        paths[name] = tmp_path / f"{name}.onnx"
        export_onnx(build_model("resnet", {"widths": widths}, (1, 8, 8), 10).eval(), (1, 8, 8), paths[name], 17)
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    out = latency(paths, x, {"b1": 1, "b16": 16}, threads=1, protocol=Protocol(warmup=2, repeats=10, rounds=3),
                  desc=None)
    assert set(out) == {"small", "big"}
    for row in out.values():
        assert set(row) == {"latency_ms_b1", "latency_p95_ms_b1", "latency_ms_b16", "latency_p95_ms_b16"}
        assert 0 < row["latency_ms_b1"] <= row["latency_p95_ms_b1"]
        assert row["latency_ms_b1"] < row["latency_ms_b16"]  # 16 samples (tiled from 4) take longer than 1
    assert out["big"]["latency_ms_b16"] > 3 * out["small"]["latency_ms_b16"]  # ~500x the MACs
