"""quantize: the pruned ONNX model -> INT8 (static QDQ by default), calibrated on training samples."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pruning.errors import DataError
from pruning.runtime.quantize import quantize
from pruning.stages.common import paths, prepared_data, write_json

if TYPE_CHECKING:
    from pruning.config import Config


@dataclass(frozen=True)
class QuantizeResult:
    mode: str
    calibration_samples: int


def run(cfg: Config, root: str | Path = ".") -> QuantizeResult:
    """Quantize ``paths.pruned_onnx`` into ``paths.quantized_onnx``; ``mode: none`` copies the fp32 model."""
    q, p = cfg.quantize, paths(cfg, root)
    if not Path(p.pruned_onnx).is_file():
        raise DataError(f"{p.pruned_onnx} not found: run the export stage first (python -m pruning export)")
    data = prepared_data(p)
    rng = np.random.default_rng(cfg.seed)
    take = rng.permutation(len(data.train.x))[: q.calibration_samples]
    calibration = data.train.x.numpy()[np.sort(take)]
    dst = Path(p.quantized_onnx)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        staged = Path(tmp) / dst.name
        if q.mode == "none":
            shutil.copyfile(p.pruned_onnx, staged)
        else:
            quantize(p.pruned_onnx, staged, q.mode, calibration, q.per_channel, q.calibrate_method, q.activation_type)
        os.replace(staged, dst)
    result = QuantizeResult(q.mode, 0 if q.mode != "static" else len(calibration))
    write_json(p.quantize_report, {**result.__dict__, "per_channel": q.per_channel,
                                   "activation_type": q.activation_type, "calibrate_method": q.calibrate_method})
    return result
