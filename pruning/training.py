"""Training, fine-tuning (optionally with knowledge distillation), evaluation and BatchNorm recalibration.

One loop, :func:`fit`, for every method that trains: the train and finetune stages, fine-tuning between iterative
pruning steps, lottery-ticket retraining, and training-time methods. It takes

- **callbacks** (:class:`Callback`): a hook before each batch, an extra loss term, a hook after ``backward`` and one
  after each optimizer step, one at the end of each epoch — what a method needs to sample gates per batch, add a
  complexity penalty, mask gradients or weights, or snapshot a rewind point, without a loop of its own;
- **parameter groups**: torch's ``param_groups`` (e.g. gate parameters with their own learning rate and no weight
  decay); by default one group with every parameter;
- **a device**: ``cpu``, ``cuda`` or ``auto`` (cuda when available). The model comes back on the device it came from.

Loops over :func:`pruning.data.batches` (slices of in-memory tensors, or a DataLoader over a streamed dataset), seeded
so a rerun gives the same weights; the loss and the reported metric are the task's (:mod:`pruning.task`: cross-entropy
and accuracy by default). Rich progress bars show the epochs, and every epoch is logged at INFO.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import Dataset

from pruning.data import EVAL_BATCH, Batch, batches, calibration_batches, forward, take
from pruning.schema import Section
from pruning.task import CLASSIFICATION, Task, mean_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Optim:
    """SGD with (Nesterov) momentum, or AdamW (decoupled weight decay: what transformers are trained with), and a
    cosine learning-rate schedule."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # one of OPTIMIZERS

    def build(self, params: Any) -> torch.optim.Optimizer:
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                               nesterov=self.momentum > 0)


OPTIMIZERS = ("sgd", "adamw")


class _Optimizer(Section):
    """An optimizer's settings in params.yaml (train:, finetune:), as :class:`Optim` runs them."""

    epochs: int = Field(12, ge=1, le=10_000, description="epochs (cosine learning-rate schedule)")
    batch_size: int = Field(64, ge=1, le=65_536, description="batch size")
    optimizer: Literal[OPTIMIZERS] = Field("sgd", description="sgd (Nesterov momentum: CNNs) | adamw "
                                               "(transformers: lr about 1e-3 from scratch, 5e-5 on pre-trained)")
    lr: float = Field(0.05, gt=0, le=10, description="initial learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only)")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="weight decay (L2 for sgd, decoupled for adamw)")

    def optim(self) -> Optim:
        return Optim(self.epochs, self.batch_size, self.lr, self.momentum, self.weight_decay, self.optimizer)


class TrainConfig(_Optimizer):
    """Dense baseline training (or, with ``epochs: 0``, the given ``model.weights`` as they are)."""

    epochs: int = Field(12, ge=0, le=10_000, description="epochs (0: no training: model.weights is the dense baseline)")


class DistillConfig(Section):
    """Knowledge distillation from the dense model (Hinton et al. 2015)."""

    enabled: bool = Field(True, description="distil from the dense model while fine-tuning")
    temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature of both models")
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the soft-target term")
    features: float = Field(0.0, ge=0, le=1_000, description="weight of an MSE between the features the pruned and "
                            "the dense model's classifiers read (a transformer's final hidden states; 0: none)")


class FinetuneConfig(_Optimizer):
    """Recovery training of the pruned model."""

    epochs: int = Field(8, ge=0, le=10_000, description="epochs (0: no fine-tuning)")
    lr: float = Field(0.01, gt=0, le=10, description="initial learning rate")
    distill: DistillConfig = Field(default_factory=DistillConfig)


@dataclass(frozen=True)
class Distill:
    """Hinton et al. (2015): loss = alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * CE; plus, with
    ``features`` > 0, that weight times the mean squared distance between the two models' final features
    (:func:`features_of`: a transformer's final hidden states, which head and MLP pruning keep at full width;
    FitNets' hint at the last layer, Minitron's hidden-state loss at one layer)."""

    teacher: nn.Module
    temperature: float
    alpha: float
    features: float = 0.0


def classifier(model: nn.Module) -> nn.Linear | None:
    """The model's classifier: its last ``nn.Linear`` in module order."""
    return next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)


def features_of(model: nn.Module) -> tuple[nn.Module, str] | None:
    """Where a model's final features are read: the output of its last transformer layer (:mod:`pruning.layers`),
    else the input of its classifier; None for a model without either."""
    from pruning import layers

    stack = list(layers.find(model).values())
    if stack:
        return stack[-1], "output"
    head = classifier(model)
    return (head, "input") if head is not None else None


class Features:
    """A model's final features (:func:`features_of`) at its last call, through a hook."""

    def __init__(self, model: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        module, side = features_of(model) or (None, "")
        self.handle = None if module is None else module.register_forward_pre_hook(self._input) if side == "input" \
            else module.register_forward_hook(self._output)

    def _input(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0]

    def _output(self, module: nn.Module, args: tuple, out: Any) -> None:
        self.value = out if isinstance(out, torch.Tensor) else out[0]

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()


@contextlib.contextmanager
def _hinted(model: nn.Module, distill: Distill | None) -> Iterator[tuple[Features, Features] | None]:
    """The student's and the teacher's classifier inputs while training, when the distillation asks for them."""
    if distill is None or not distill.features:
        yield None
        return
    hints = (Features(model), Features(distill.teacher))
    try:
        yield hints
    finally:
        for h in hints:
            h.remove()


class Callback:
    """Hooks into :func:`fit`. Every hook is a no-op here; override the ones a method needs. ``step`` counts optimizer
    steps from 1 over the whole run."""

    def before_batch(self, model: nn.Module, step: int) -> None:
        """Before the forward pass of the batch that becomes optimizer step ``step``."""

    def extra_loss(self, model: nn.Module, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        """A term added to the batch loss (a regulariser), or None."""
        return None

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Gradients are computed, the optimizer has not stepped yet."""

    def on_step(self, model: nn.Module, step: int) -> None:
        """The optimizer has stepped."""

    def on_epoch(self, model: nn.Module, record: dict[str, float]) -> None:
        """An epoch ended; ``record`` (epoch, loss, accuracies) may be extended with the callback's own figures."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cpu`` / ``cuda`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _home(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _progress() -> Progress:
    """A live bar in a terminal; none when the output is a file or a pipe, where rich would print one truncated last
    frame (the per-epoch INFO lines are the progress there)."""
    from rich import get_console

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}"), disable=not get_console().is_terminal)


def distillation_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float, alpha: float, task: Task = CLASSIFICATION) -> torch.Tensor:
    """Soft-target KL (scaled by T^2 so its gradient keeps its size) blended with the task's loss on the targets.
    For a task that is not classification the soft term is the mean squared distance to the teacher's outputs."""
    if task.classification:
        t = temperature
        soft = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                        reduction="batchmean", log_target=True) * (t * t)
    else:
        soft = F.mse_loss(logits, teacher_logits)
    return alpha * soft + (1 - alpha) * task.loss(logits, targets)


@torch.no_grad()
def evaluate(model: nn.Module, split: Dataset, batch_size: int = EVAL_BATCH, device: str = "cpu",
             task: Task = CLASSIFICATION) -> tuple[float, float]:
    """Returns (the task's metric, its mean loss) of ``model`` in eval mode over ``split`` (sample-weighted means of
    the batches; accuracy and cross-entropy by default)."""
    dev, home = resolve_device(device), _home(model)
    model.to(dev).eval()
    scores = mean_scores(task, ((forward(model, b.x), b.y) for b in (b.to(dev) for b in batches(split, batch_size))))
    model.to(home)
    return scores


def fit(model: nn.Module, train: Dataset, opt: Optim, seed: int, desc: str, *, distill: Distill | None = None,
        test: Dataset | None = None, callbacks: Sequence[Callback] = (),
        param_groups: list[dict[str, Any]] | None = None, device: str = "cpu",
        task: Task = CLASSIFICATION) -> list[dict[str, float]]:
    """Train ``model`` in place. Returns one record per epoch: loss, train_<metric> (and test_<metric>, test_loss when
    ``test`` is given; the metric is the task's, accuracy by default).

    The test split is only reported, never used to pick anything. ``param_groups`` are torch.optim parameter groups
    (each may set its own ``lr`` / ``weight_decay``); by default every parameter in one group with ``opt``'s values.
    In several processes: :func:`pruning.distributed.fit`.
    """
    return train_loop(model, train, opt, seed, desc, distill=distill, test=test, callbacks=callbacks,
                      param_groups=param_groups, device=device, task=task)


def shard(batch: Batch, rank: int, world: int) -> Batch | None:
    """Rank ``rank``'s share of ``batch`` under DDP (samples ``rank``, ``rank + world``, ...; the whole batch in one
    process), or None for a batch too small to train on: BatchNorm cannot train on a single sample, in any share."""
    if len(batch) < 2 * world:
        return None
    return batch.take(slice(rank, None, world)) if world > 1 else batch


def summed(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The sum of ``values`` over the ranks (on ``device`` for the collective: nccl reduces CUDA tensors only);
    returned where ``values`` was."""
    import torch.distributed as dist

    here = values.to(device)
    dist.all_reduce(here)
    return here.to(values.device)


def train_loop(model: nn.Module, train: Dataset, opt: Optim, seed: int, desc: str, *, distill: Distill | None = None,
               test: Dataset | None = None, callbacks: Sequence[Callback] = (),
               param_groups: list[dict[str, Any]] | None = None, device: str | torch.device = "cpu",
               task: Task = CLASSIFICATION, wrapped: nn.Module | None = None, rank: int = 0,
               world: int = 1) -> list[dict[str, float]]:
    """:func:`fit`'s loop. Under DDP (:mod:`pruning.distributed`) each of the ``world`` processes runs it with the
    DDP ``wrapped`` model and its ``rank``: it takes samples ``rank``, ``rank + world``, ... of every batch the
    single-process loop takes (the same steps and schedule; DDP averages the gradients), the epoch's figures are
    summed over the ranks, and rank 0 alone evaluates the test split, reports progress and returns the history."""
    dev, home = resolve_device(device) if isinstance(device, str) else device, _home(model)
    net = wrapped if wrapped is not None else model
    gen = torch.Generator().manual_seed(seed)  # one stream of epoch orders: a rerun sees the same batches
    torch.manual_seed(seed)
    model.to(dev)
    optimizer = opt.build(param_groups if param_groups is not None else model.parameters())
    per_epoch = math.ceil(len(train) / opt.batch_size)  # type: ignore[arg-type]
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opt.epochs * per_epoch)
    name = task.metric_name
    if distill is not None:
        distill.teacher.to(dev).eval()
    history: list[dict[str, float]] = []
    step = 0
    with _progress() as bar, _hinted(model, distill) as hints:
        bar_id = bar.add_task(desc, total=opt.epochs, status="")
        for epoch in range(opt.epochs):
            model.train()
            sums = torch.zeros(3, dtype=torch.float64)  # loss * samples, metric * samples, samples
            for batch in batches(train, opt.batch_size, shuffle=True, generator=gen):
                batch = shard(batch, rank, world)
                if batch is None:
                    continue
                step += 1
                batch = batch.to(dev)
                for cb in callbacks:
                    cb.before_batch(model, step)
                logits = forward(net, batch.x)
                if distill is None:
                    loss = task.loss(logits, batch.y)
                else:
                    with torch.no_grad():
                        teacher_logits = forward(distill.teacher, batch.x)
                    loss = distillation_loss(logits, batch.y, teacher_logits, distill.temperature, distill.alpha, task)
                    if hints is not None:
                        loss = loss + distill.features * F.mse_loss(hints[0].value, hints[1].value)
                for cb in callbacks:
                    extra = cb.extra_loss(model, batch, logits)
                    if extra is not None:
                        loss = loss + extra
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for cb in callbacks:
                    cb.after_backward(model, step)
                optimizer.step()
                schedule.step()
                for cb in callbacks:
                    cb.on_step(model, step)
                with torch.no_grad():
                    sums += torch.tensor([loss.item() * len(batch), float(task.metric(logits, batch.y)) * len(batch),
                                          len(batch)], dtype=torch.float64)
            if world > 1:
                sums = summed(sums, dev)  # the epoch's figures over every rank's share
            total, metric, seen = sums.tolist()
            record = {"epoch": epoch + 1, "loss": total / max(seen, 1), f"train_{name}": metric / max(seen, 1)}
            if test is not None and rank == 0:
                record[f"test_{name}"], record["test_loss"] = evaluate(model, test, device=str(dev), task=task)
            for cb in callbacks:
                cb.on_epoch(model, record)
            history.append(record)
            status = " ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch")
            if rank == 0:
                bar.update(bar_id, advance=1, status=status)
                # INFO: with output redirected (CI, nohup, Prefect logs) the progress bar draws nothing until it ends
                log.info("%s epoch %d/%d: %s", desc, epoch + 1, opt.epochs, status)
    model.to(home)
    if distill is not None:
        distill.teacher.to(home)
    return history


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps :func:`fit` takes per epoch on ``n`` samples (it skips a trailing batch of one sample)."""
    return n // batch_size + (1 if n % batch_size >= 2 else 0)


@torch.no_grad()
def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """Every weight and BatchNorm statistic of ``model`` initialised anew (each layer's own ``reset_parameters``), in
    place, its structure kept: a found structure trained again from scratch. Returns ``model``."""
    torch.manual_seed(seed)
    for m in model.modules():
        if m is not model and callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
    return model


def recalibrate_batchnorm(model: nn.Module, split: Dataset, n_batches: int, seed: int, device: str = "cpu") -> None:
    """Re-estimate BatchNorm running statistics after pruning, with no gradient step.

    Removing channels shifts the statistics the next layers see; refreshing them alone recovers much of the accuracy
    lost by one-shot pruning. Uses a cumulative average (momentum=None) over ``batches`` random calibration batches.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    dev, home = resolve_device(device), _home(model)
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.to(dev).train()
    for idx in calibration_batches(len(split), n_batches, seed):  # type: ignore[arg-type]
        if len(idx) >= 2:
            forward(model, take(split, idx).to(dev).x)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.to(home).eval()
