"""What the model is trained and judged on: a loss and a metric (``task.*`` in params.yaml).

Defaults: cross-entropy and top-1 accuracy. Built in: ``top5_accuracy``, ``mse`` (loss and metric), ``bce`` (multi-label
logits). Your own: ``module:callable`` taking ``(outputs, targets)`` of a batch and returning a scalar tensor (a loss:
the batch mean; a metric: its batch mean — a split's metric is the sample-weighted mean over its batches, so it must
be a per-sample average such as accuracy, MSE or per-label accuracy, not a whole-set statistic like AUC).

The same functions score torch models (training, pruning criteria, the prune and finetune stages) and ONNX Runtime's
outputs (the evaluate stage), so the numbers compare.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from pruning.errors import ConfigError, PruningError
from pruning.schema import Section

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Top-1: share of samples whose largest output is the target class."""
    return (outputs.argmax(1) == targets).double().mean()  # float64: k / n exactly enough to sum over batches


def top5_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of samples whose target class is among the 5 largest outputs (all of them when there are fewer)."""
    k = min(5, outputs.shape[1])
    return (outputs.topk(k, dim=1).indices == targets[:, None]).any(1).double().mean()


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs, targets.to(outputs.dtype).view_as(outputs))


def bce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype))


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets)


LOSSES: dict[str, Fn] = {"cross_entropy": cross_entropy, "mse": mse, "bce": bce}
# name -> (function, greater is better)
METRICS: dict[str, tuple[Fn, bool]] = {"accuracy": (accuracy, True), "top5_accuracy": (top5_accuracy, True),
                                       "mse": (mse, False)}


class TaskConfig(Section):
    """The loss the model trains on and the metric the reports, gates and registry use."""

    loss: str = Field("cross_entropy", description="cross_entropy | mse | bce (multi-label logits) | "
                      "package.module:callable (outputs, targets) -> scalar")
    metric: str = Field("accuracy", description="accuracy | top5_accuracy | mse | package.module:callable (outputs, "
                        "targets) -> batch mean")
    greater_is_better: bool | None = Field(None, description="direction of your own metric (built-ins know theirs)")

    @model_validator(mode="after")
    def _known(self) -> TaskConfig:
        if self.loss not in LOSSES and ":" not in self.loss:
            raise ValueError(f"unknown loss {self.loss!r}: {' | '.join(LOSSES)} or package.module:callable")
        if self.metric not in METRICS and ":" not in self.metric:
            raise ValueError(f"unknown metric {self.metric!r}: {' | '.join(METRICS)} or package.module:callable")
        if ":" in self.metric and self.greater_is_better is None:
            raise ValueError(f"metric {self.metric!r}: set greater_is_better (true for accuracy-like, false for "
                             "error-like)")
        return self


@dataclass(frozen=True)
class Task:
    """A loss, a metric with its name and direction."""

    loss: Fn = cross_entropy
    metric: Fn = accuracy
    metric_name: str = "accuracy"
    greater_is_better: bool = True
    classification: bool = True  # cross-entropy: distillation matches softened logits (else the teacher's outputs)


CLASSIFICATION = Task()


def _resolve(spec: str, key: str) -> Fn:
    from pruning.zoo import resolve_callable

    try:
        return resolve_callable(spec)
    except PruningError as exc:
        raise ConfigError(f'Invalid "task.{key}": {exc}') from None


def build_task(cfg: TaskConfig) -> Task:
    """The :class:`Task` of ``task.*`` (ConfigError naming the key when a callable does not import)."""
    loss = LOSSES[cfg.loss] if cfg.loss in LOSSES else _resolve(cfg.loss, "loss")
    if cfg.metric in METRICS:
        metric, better = METRICS[cfg.metric]
        name = cfg.metric
    else:
        metric, better = _resolve(cfg.metric, "metric"), bool(cfg.greater_is_better)
        name = cfg.metric.rpartition(":")[2].rpartition(".")[2]
    if cfg.greater_is_better is not None:
        better = cfg.greater_is_better
    return Task(loss, metric, name, better, classification=cfg.loss == "cross_entropy")


@torch.no_grad()
def mean_scores(task: Task, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """(metric, loss) over ``(outputs, targets)`` batches: sample-weighted means of the per-batch values. The one
    place torch models (training.evaluate) and ONNX Runtime's outputs (runtime.session.score) are scored."""
    metric, loss, seen = 0.0, 0.0, 0
    for out, y in batches:
        n = int(y.shape[0])
        metric += float(task.metric(out, y)) * n
        loss += float(task.loss(out, y)) * n
        seen += n
    return metric / max(seen, 1), loss / max(seen, 1)

