"""Benchmark: what INT8 buys at batch 1 as a function of model width (why the default digits model is a wide one).

For CIFAR-style ResNet-8s of growing width on the digits input shape (1x8x8), export to ONNX, quantize with the
pipeline's own settings (static QDQ, uint8 activations, int8 per-channel weights), and time fp32 and INT8 alternately
at batch 1 on one ONNX Runtime thread. Weights are random (latency does not depend on them). Prints one line per
width: MACs, weight bytes, fp32 and INT8 p50 (median over rounds), and INT8's factor.

    python -m bench.int8_width [--rounds 5] [--repeats 200]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from pruning.counting import count_macs
from pruning.runtime.export import export_onnx
from pruning.runtime.quantize import quantize
from pruning.runtime.timing import Protocol, latency
from pruning.zoo.resnet import resnet

# Dense default (160, 320, 640) and what uniform 35 % pruning with round_to 8 leaves of it (104, 208, 416), among
# narrower and wider ones; (32, 64, 128) was the default before.
WIDTHS = [(32, 64, 128), (64, 128, 256), (80, 160, 320), (104, 208, 416), (128, 256, 512), (160, 320, 640)]
SHAPE = (1, 8, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    calibration = np.random.default_rng(0).random((256, *SHAPE), dtype=np.float32)
    print(f"{'widths':>16} {'MMACs':>7} {'weights':>9} {'fp32 ms':>8} {'INT8 ms':>8} {'INT8 x':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for widths in WIDTHS:
            model = resnet(SHAPE[0], 10, list(widths), [1, 1, 1]).eval()
            fp32, int8 = Path(tmp) / f"{widths}.onnx", Path(tmp) / f"{widths}.int8.onnx"
            export_onnx(model, SHAPE, fp32, opset=17)
            quantize(fp32, int8, "static", calibration, per_channel=True, activation_type="uint8")
            # the evaluate stage's own protocol: alternating rounds, medians over rounds
            timed = latency({"fp32": fp32, "int8": int8}, calibration, {"b1": 1}, threads=1,
                            protocol=Protocol(warmup=20, repeats=args.repeats, rounds=args.rounds))
            f, q = timed["fp32"]["latency_ms_b1"], timed["int8"]["latency_ms_b1"]
            macs, params = count_macs(model, SHAPE)
            print(f"{str(widths):>16} {macs / 1e6:7.1f} {params * 4 / 2**20:6.1f} MB {f:8.3f} {q:8.3f} {f / q:6.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
