"""finetune: recover accuracy of the pruned model, optionally distilling from the dense one -> models/finetuned.pt."""

from __future__ import annotations

from dataclasses import dataclass

from pruning.config import Config
from pruning.stages.common import load_data, provenance, write_json
from pruning.surgery import load_model, save_model
from pruning.train import Distill, Optim, evaluate, fit


@dataclass(frozen=True)
class FinetuneResult:
    accuracy_before: float
    accuracy: float
    loss: float


def run_finetune(cfg: Config) -> FinetuneResult:
    """Fine-tune ``models/pruned.pt`` for ``finetune.epochs`` (with KD from the dense model if enabled)."""
    data = load_data(cfg)
    model, record = load_model(cfg.paths.pruned_model)
    f = cfg.finetune
    distill = None
    if f.distill.enabled:
        teacher, _ = load_model(cfg.paths.dense_model)
        distill = Distill(teacher, f.distill.temperature, f.distill.alpha)
    before, _ = evaluate(model, data.test.x, data.test.y)
    history = []
    if f.epochs:
        history = fit(model, data.train.x, data.train.y, Optim(f.epochs, f.batch_size, f.lr, f.momentum, f.weight_decay),
                      cfg.seed, "fine-tune pruned", distill=distill, x_test=data.test.x, y_test=data.test.y)
    accuracy, loss = evaluate(model, data.test.x, data.test.y)
    save_model(cfg.paths.finetuned_model, model, arch=record["arch"], kwargs=record["kwargs"],
               input_shape=record["input_shape"], num_classes=record["num_classes"], history=record["history"],
               removed_blocks=record.get("removed_blocks", []),
               meta=provenance(cfg, "finetune"))
    result = FinetuneResult(before, accuracy, loss)
    write_json(cfg.paths.finetune_report, {**result.__dict__, "distill": f.distill.enabled, "epochs": history})
    return result
