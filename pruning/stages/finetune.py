"""finetune: recover accuracy of the pruned model, optionally distilling from the dense one -> models/finetuned.pt.

What the pruning edits made of the model stays so while it trains (masked weights stay zero:
:func:`pruning.checkpoint.constraints`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pruning.checkpoint import constraints, load_model, save_like
from pruning.data import forward
from pruning.distributed import fit
from pruning.errors import ConfigError
from pruning.stages.common import paths, prepared_data, provenance, write_json
from pruning.task import build_task
from pruning.training import Distill, Features, evaluate

if TYPE_CHECKING:
    from pruning.config import Config


@dataclass(frozen=True)
class FinetuneResult:
    accuracy_before: float
    accuracy: float
    loss: float


def run(cfg: Config, root: str | Path = ".") -> FinetuneResult:
    """Fine-tune ``models/pruned.pt`` for ``finetune.epochs`` (with KD from the dense model if enabled)."""
    p = paths(cfg, root)
    data = prepared_data(cfg, root)
    model, record = load_model(p.pruned_model, cfg.model.arch)
    f = cfg.finetune
    distill = None
    if f.distill.enabled:
        teacher, _ = load_model(p.dense_model, cfg.model.arch)
        distill = Distill(teacher, f.distill.temperature, f.distill.alpha, f.distill.features)
        _check_features(model, teacher, f.distill.features, data.example)
    task = build_task(cfg.task)
    before, _ = evaluate(model, data.test, device=cfg.device, task=task)
    history = []
    if f.epochs:
        history = fit(cfg.distributed, model, data.train, f.optim(), cfg.seed,
                      "fine-tune pruned", distill=distill, test=data.test, callbacks=constraints(model, record),
                      device=cfg.device, task=task)
    accuracy, loss = evaluate(model, data.test, device=cfg.device, task=task)
    save_like(p.finetuned_model, model, record, provenance(cfg, "finetune", root))
    result = FinetuneResult(before, accuracy, loss)
    write_json(p.finetune_report, {**result.__dict__, "distill": f.distill.enabled, "epochs": history})
    return result


def _check_features(model: nn.Module, teacher: nn.Module, weight: float, example: Any) -> None:
    """Feature distillation compares the two models' final features (:func:`pruning.training.features_of`): they must
    have one shape."""
    if not weight:
        return
    shapes = []
    for m in (model, teacher):
        seen = Features(m)
        with torch.no_grad():
            forward(m.eval(), example)
        seen.remove()
        shapes.append(tuple(seen.value.shape[1:]) if seen.value is not None else None)
    if None in shapes or shapes[0] != shapes[1]:
        raise ConfigError(f'Invalid "finetune.distill.features": {weight:g}, but the pruned and the dense model\'s '
                          f"final features differ ({shapes[0]} vs {shapes[1]}): pruning cut their width (on a "
                          "transformer keep the hidden size, prune.hidden: false; or set it to 0)")
