"""quantize: the pruned ONNX model -> INT8 (static QDQ by default), calibrated on training samples."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pruning.config import Config
from pruning.errors import DataError
from pruning.quantize import quantize
from pruning.stages.common import load_data, write_json


@dataclass(frozen=True)
class QuantizeResult:
    mode: str
    calibration_samples: int


def run_quantize(cfg: Config) -> QuantizeResult:
    """Quantize ``paths.pruned_onnx`` into ``paths.quantized_onnx``; ``mode: none`` copies the fp32 model."""
    q = cfg.quantize
    if not Path(cfg.paths.pruned_onnx).is_file():
        raise DataError(f"{cfg.paths.pruned_onnx} not found: run the export stage first (python -m pruning export)")
    data = load_data(cfg)
    rng = np.random.default_rng(cfg.seed)
    take = rng.permutation(len(data.train.x))[: q.calibration_samples]
    calibration = data.train.x.numpy()[np.sort(take)]
    dst = Path(cfg.paths.quantized_onnx)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        staged = Path(tmp) / dst.name
        if q.mode == "none":
            shutil.copyfile(cfg.paths.pruned_onnx, staged)
        else:
            quantize(cfg.paths.pruned_onnx, staged, q.mode, calibration, q.per_channel, q.calibrate_method,
                     q.activation_type)
        os.replace(staged, dst)
    result = QuantizeResult(q.mode, 0 if q.mode != "static" else len(calibration))
    write_json(cfg.paths.quantize_report, {**result.__dict__, "per_channel": q.per_channel, "activation_type": q.activation_type,
                                           "calibrate_method": q.calibrate_method})
    return result
