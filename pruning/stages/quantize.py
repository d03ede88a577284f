"""quantize: the pruned ONNX model -> INT8: static QDQ calibrated on training samples for CNNs, dynamic for graphs
without convolutions (``mode: auto``, :func:`pruning.runtime.quantize.resolved_mode`).

With ``select: auto`` (static), a few operator selections are quantized and the one measured fastest at batch 1 is
kept (pruning/runtime/int8_select.py), timed against the pruned fp32 model as the evaluate stage times. The report
lists each selection's figures and whether the kept INT8 beat fp32; where it did not, the evaluate stage's shipping
decision ships fp32.
"""

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
from pruning.runtime.int8_select import Selection, Timer, select
from pruning.runtime.quantize import ORT_CALIBRATION_BATCH, quantize, resolved_mode
from pruning.runtime.session import feeds_for
from pruning.runtime.timing import Protocol, latency
from pruning.stages.common import paths, prepared_data, write_json

if TYPE_CHECKING:
    from pruning.config import Config


@dataclass(frozen=True)
class QuantizeResult:
    mode: str
    calibration_samples: int
    chosen: str | None = None  # the operator selection kept (select: auto), e.g. "all", "no_depthwise"
    int8_faster_than_fp32: bool | None = None  # measured at batch 1 (select: auto)


def run(cfg: Config, root: str | Path = ".", timer: Timer = latency) -> QuantizeResult:
    """Quantize ``paths.pruned_onnx`` into ``paths.quantized_onnx``; ``mode: none`` copies the fp32 model.
    ``timer``: the timing protocol (a stand-in in tests)."""
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
    selection: Selection | None = None
    mode = resolved_mode(p.pruned_onnx, q.mode)
    if mode == "none":
        publish(p.pruned_onnx, p.quantized_onnx)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "quantized.onnx"
            if mode == "static" and q.select == "auto":
                selection = select(p.pruned_onnx, staged, calibration, per_channel=q.per_channel,
                                   method=q.calibrate_method, activation_type=q.activation_type,
                                   threads=cfg.evaluate.threads, protocol=_protocol(cfg), timer=timer)
            else:
                quantize(p.pruned_onnx, staged, mode, calibration, q.per_channel, q.calibrate_method,
                         q.activation_type)
            publish(staged, p.quantized_onnx)
    result = QuantizeResult(mode, 0 if mode != "static" else len(chosen),
                            selection.chosen.name if selection else None,
                            selection.int8_faster_than_fp32 if selection else None)
    report = {"mode": mode, "mode_setting": q.mode, "calibration_samples": result.calibration_samples,
              "per_channel": q.per_channel, "activation_type": q.activation_type,
              "calibrate_method": q.calibrate_method, "select": q.select if mode == "static" else None}
    if selection:
        pr = _protocol(cfg)
        report |= {**selection.report(), "timing": {"threads": cfg.evaluate.threads, "batch_size": 1,
                                                    "warmup": pr.warmup, "repeats": pr.repeats, "rounds": pr.rounds}}
    write_json(p.quantize_report, report)
    return result


def _protocol(cfg: Config) -> Protocol:
    """The evaluate stage's timing settings: the selection is measured as the shipping decision will be."""
    return Protocol(cfg.evaluate.warmup, cfg.evaluate.repeats, cfg.evaluate.rounds)
