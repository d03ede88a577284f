"""export: dense and fine-tuned pruned models -> ONNX, checked by onnx.checker and by parity with torch."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pruning.atomic import publish
from pruning.checkpoint import load_model, spec
from pruning.data import at_length, has_sequence, take, tensors
from pruning.errors import params_errors
from pruning.runtime.export import export_onnx, parity
from pruning.stages.common import paths, prepared_data, write_json

if TYPE_CHECKING:
    from pruning.config import Config


@dataclass(frozen=True)
class ExportResult:
    dense_parity: float  # max |torch - ORT|
    pruned_parity: float
    parity_max_abs: float
    parity_score: float  # max |torch - ORT| / (atol + rtol |torch|): <= 1 passed


def run(cfg: Config, root: str | Path = ".") -> ExportResult:
    """Export both models; ParityError (and nothing written) if either differs from torch beyond atol + rtol."""
    p = paths(cfg, root)
    data = prepared_data(cfg, root)
    x = take(data.test, range(min(cfg.export.parity_samples, len(data.test)))).x  # real test samples, every input
    lengths = [t.shape[1] for t in tensors(x) if has_sequence(t)]
    shorter = at_length(x, lengths[0] // 2) if lengths and lengths[0] >= 2 else None  # the texts' first halves
    jobs = {"dense": (p.dense_model, p.dense_onnx), "pruned": (p.finetuned_model, p.pruned_onnx)}
    parities = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (src, _) in jobs.items():
            model, record = load_model(src, cfg.model.arch)
            staged = Path(tmp) / f"{name}.onnx"
            export_onnx(model, spec(record), staged, cfg.export.opset, cfg.export.exporter)
            with params_errors("export"):
                parities[name] = parity(model, staged, x, cfg.export.parity_atol, cfg.export.parity_rtol, name)
                if shorter is not None:  # the dynamic sequence axis serves other lengths too (evaluate times one)
                    other = parity(model, staged, shorter, cfg.export.parity_atol, cfg.export.parity_rtol,
                                   f"{name} (at {lengths[0] // 2} tokens)")
                    parities[name] = max(parities[name], other, key=lambda q: q.score)
        for name, (_, dst) in jobs.items():  # publish only once both passed
            publish(Path(tmp) / f"{name}.onnx", dst)
    result = ExportResult(parities["dense"].max_abs, parities["pruned"].max_abs,
                          max(q.max_abs for q in parities.values()), max(q.score for q in parities.values()))
    write_json(p.export_report, {**result.__dict__, "exporter": cfg.export.exporter, "opset": cfg.export.opset,
                                 "parity_samples": len(tensors(x)[0]), "atol": cfg.export.parity_atol,
                                 "rtol": cfg.export.parity_rtol})
    return result
