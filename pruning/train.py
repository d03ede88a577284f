"""Training, fine-tuning (optionally with knowledge distillation), evaluation and BatchNorm recalibration.

Plain loops over in-memory tensors (the datasets here fit in RAM; a DataLoader would only add overhead), seeded so a
rerun gives the same weights. Rich progress bars show the epochs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Optim:
    """SGD with momentum and a cosine learning-rate schedule."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4


@dataclass(frozen=True)
class Distill:
    """Hinton et al. (2015): loss = alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * CE."""

    teacher: nn.Module
    temperature: float
    alpha: float


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}"))


def distillation_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """Soft-target KL (scaled by T^2 so its gradient keeps its size) blended with hard-label cross-entropy."""
    t = temperature
    soft = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * F.cross_entropy(logits, targets)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """Returns (accuracy, mean cross-entropy) of ``model`` in eval mode."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        loss += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / len(x), loss / len(x)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: Optim, seed: int, desc: str,
        distill: Distill | None = None, x_test: torch.Tensor | None = None,
        y_test: torch.Tensor | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place. Returns one record per epoch: loss, train_accuracy (and test_* when given).

    The test split is only reported, never used to pick anything.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum,
                                weight_decay=opt.weight_decay, nesterov=opt.momentum > 0)
    steps_per_epoch = math.ceil(len(x) / opt.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opt.epochs * steps_per_epoch)
    if distill is not None:
        distill.teacher.eval()
    history: list[dict[str, float]] = []
    with _progress() as bar:
        task = bar.add_task(desc, total=opt.epochs, status="")
        for epoch in range(opt.epochs):
            model.train()
            order = torch.randperm(len(x), generator=gen)
            total, correct, seen = 0.0, 0, 0
            for i in range(0, len(x), opt.batch_size):
                idx = order[i:i + opt.batch_size]
                if len(idx) < 2:  # BatchNorm cannot train on a single sample
                    continue
                xb, yb = x[idx], y[idx]
                logits = model(xb)
                if distill is None:
                    loss = F.cross_entropy(logits, yb)
                else:
                    with torch.no_grad():
                        teacher_logits = distill.teacher(xb)
                    loss = distillation_loss(logits, yb, teacher_logits, distill.temperature, distill.alpha)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(idx)
                correct += (logits.argmax(1) == yb).sum().item()
                seen += len(idx)
            record = {"epoch": epoch + 1, "loss": total / max(seen, 1), "train_accuracy": correct / max(seen, 1)}
            if x_test is not None and y_test is not None:
                record["test_accuracy"], record["test_loss"] = evaluate(model, x_test, y_test)
            history.append(record)
            status = " ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch")
            bar.update(task, advance=1, status=status)
            log.debug("%s epoch %d: %s", desc, epoch + 1, status)
    return history


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batches: int, batch_size: int, seed: int) -> None:
    """Re-estimate BatchNorm running statistics after pruning, with no gradient step.

    Removing channels shifts the statistics the next layers see; refreshing them alone recovers much of the accuracy
    lost by one-shot pruning. Uses a cumulative average (momentum=None) over ``batches`` random batches.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    for b in range(batches):
        idx = order[(b * batch_size) % len(x):][:batch_size]
        if len(idx) >= 2:
            model(x[idx])
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.eval()
