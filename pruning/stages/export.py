"""export: dense and fine-tuned pruned models -> ONNX, checked by onnx.checker and by parity with torch."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pruning.config import Config
from pruning.export import export_onnx, parity
from pruning.stages.common import load_data, write_json
from pruning.surgery import load_model


@dataclass(frozen=True)
class ExportResult:
    dense_parity: float
    pruned_parity: float
    parity_max_abs: float


def run_export(cfg: Config) -> ExportResult:
    """Export both models; ParityError (and nothing written) if either differs from torch beyond the tolerance."""
    data = load_data(cfg)
    x = data.test.x[: cfg.export.parity_samples].numpy()
    jobs = {"dense": (cfg.paths.dense_model, cfg.paths.dense_onnx),
            "pruned": (cfg.paths.finetuned_model, cfg.paths.pruned_onnx)}
    parities = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (src, _) in jobs.items():
            model, record = load_model(src)
            staged = Path(tmp) / f"{name}.onnx"
            export_onnx(model, record["input_shape"], staged, cfg.export.opset, cfg.export.exporter)
            parities[name] = parity(model, staged, x, cfg.export.parity_tolerance)
        for name, (_, dst) in jobs.items():  # publish only once both passed
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / f"{name}.onnx", dst)
    result = ExportResult(parities["dense"], parities["pruned"], max(parities.values()))
    write_json(cfg.paths.export_report, {**result.__dict__, "exporter": cfg.export.exporter, "opset": cfg.export.opset,
                                         "parity_samples": len(x), "tolerance": cfg.export.parity_tolerance})
    return result
