"""quantize: the pruned ONNX model -> INT8 (static QDQ by default), calibrated on training samples."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch

from pruning.atomic import publish
from pruning.data import Split, take
from pruning.errors import DataError
from pruning.runtime.quantize import ORT_CALIBRATION_BATCH, quantize
from pruning.runtime.session import feeds_for
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
    data = prepared_data(cfg, root)
    split = data.calibration_split
    rng = np.random.default_rng(cfg.seed)
    chosen = np.sort(rng.permutation(len(split))[: q.calibration_samples])
    calibration: np.ndarray | list[dict[str, np.ndarray]]
    if isinstance(split, Split) and isinstance(split.x, torch.Tensor):
        calibration = split.x.numpy()[chosen]
    else:  # read batch by batch; every input of the model fed by its name
        names = [i.name for i in onnx.load(p.pruned_onnx, load_external_data=False).graph.input]
        calibration = [feeds_for(names, take(split, chosen[i:i + ORT_CALIBRATION_BATCH]).x)
                       for i in range(0, len(chosen), ORT_CALIBRATION_BATCH)]
    if q.mode == "none":
        publish(p.pruned_onnx, p.quantized_onnx)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "quantized.onnx"
            quantize(p.pruned_onnx, staged, q.mode, calibration, q.per_channel, q.calibrate_method, q.activation_type)
            publish(staged, p.quantized_onnx)
    result = QuantizeResult(q.mode, 0 if q.mode != "static" else len(chosen))
    write_json(p.quantize_report, {**result.__dict__, "per_channel": q.per_channel,
                                   "activation_type": q.activation_type, "calibrate_method": q.calibrate_method})
    return result
