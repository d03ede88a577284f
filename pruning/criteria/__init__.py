"""Pruning criteria: how a unit (a channel of a torch-pruning dependency group) is scored.

:data:`CRITERIA` is the one list of criterion names: params.yaml's ``criterion`` Literal is derived from it
(:data:`CriterionName`), and so are the benchmark's. Each entry builds a torch-pruning importance estimator and, if
the criterion reads data, says how to prepare it on calibration batches of the training split (``prepare``): Taylor
reads ``param.grad``, Hessian accumulates squared per-sample gradients, the loss-change oracle measures on a sample.
Adding a criterion = one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch_pruning as tp
from torch import nn
from torch.utils.data import Dataset

from pruning.criteria.oracle import MAX_CHANNELS, MAX_SECONDS, LossChangeImportance
from pruning.data import calibration_batches, calibration_sample, forward, take
from pruning.task import CLASSIFICATION, Task


@dataclass(frozen=True)
class Limits:
    """Bounds of the loss_change oracle per pruning step (the other criteria ignore them)."""

    max_channels: int = MAX_CHANNELS
    max_seconds: float = MAX_SECONDS


# (imp, model, train, batches, seed, task)
Prepare = Callable[[tp.importance.Importance, nn.Module, Dataset, int, int, Task], None]


@dataclass(frozen=True)
class Criterion:
    build: Callable[[Limits], tp.importance.Importance]
    prepare: Prepare | None = None  # None: scores from the weights alone


def _gradients(imp: tp.importance.Importance, model: nn.Module, train: Dataset, batches: int, seed: int,
               task: Task) -> None:
    """Summed loss gradients over the calibration batches, left in ``param.grad`` (Taylor reads them)."""
    model.eval()  # gradients of the deployed (eval-mode) function; BatchNorm statistics stay as trained
    model.zero_grad(set_to_none=True)
    device = next((p.device for p in model.parameters()), None)
    for idx in calibration_batches(len(train), batches, seed):  # type: ignore[arg-type]
        batch = take(train, idx).to(device or "cpu")
        task.loss(forward(model, batch.x), batch.y).backward()


def _per_sample_gradients(imp: tp.importance.Importance, model: nn.Module, train: Dataset, batches: int, seed: int,
                          task: Task) -> None:
    """Squared per-sample gradients accumulated in the importance (OBD's diagonal Hessian approximation)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    imp.zero_grad()
    device = next((p.device for p in model.parameters()), None)
    for idx in calibration_batches(len(train), batches, seed):  # type: ignore[arg-type]
        batch = take(train, idx).to(device or "cpu")
        out = forward(model, batch.x)  # one forward; each sample's loss from its own row
        for i in range(len(batch)):
            model.zero_grad(set_to_none=True)
            task.loss(out[i:i + 1], batch.y[i:i + 1]).backward(retain_graph=i < len(batch) - 1)
            imp.accumulate_grad(model)


def _bind(imp: tp.importance.Importance, model: nn.Module, train: Dataset, batches: int, seed: int,
          task: Task) -> None:
    sample = calibration_sample(train, batches, seed)
    imp.bind(model, sample.x, sample.y, task.loss)


CRITERIA: dict[str, Criterion] = {
    # Group magnitude (Han et al. 2015, grouped over coupled layers as in Fang et al. 2023, DepGraph).
    "l1": Criterion(lambda _: tp.importance.GroupMagnitudeImportance(p=1)),
    "l2": Criterion(lambda _: tp.importance.GroupMagnitudeImportance(p=2)),
    # First-order Taylor |w * dL/dw| (Molchanov et al. 2019).
    "taylor": Criterion(lambda _: tp.importance.GroupTaylorImportance(), _gradients),
    # Optimal Brain Damage: diagonal Hessian approximated by squared per-sample gradients (LeCun et al. 1989).
    "hessian": Criterion(lambda _: tp.importance.GroupHessianImportance(), _per_sample_gradients),
    # BatchNorm scale |gamma| of the channel (Liu et al. 2017, network slimming).
    "bn_scale": Criterion(lambda _: tp.importance.BNScaleImportance()),
    # Layer-adaptive magnitude (Lee et al. 2021): magnitude normalised by the magnitudes above it in its layer.
    "lamp": Criterion(lambda _: tp.importance.LAMPImportance()),
    "random": Criterion(lambda _: tp.importance.RandomImportance()),
    # The measured loss increase when the channel is removed (the "oracle"; pruning/criteria/oracle.py).
    "loss_change": Criterion(lambda lim: LossChangeImportance(lim.max_channels, lim.max_seconds), _bind),
}

CriterionName = Literal[tuple(CRITERIA)]  # type: ignore[valid-type]  # params.yaml's choices, derived from the registry


def make(name: str, limits: Limits = Limits()) -> tp.importance.Importance:
    """A fresh importance estimator for criterion ``name``."""
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r} (valid: {', '.join(CRITERIA)})")
    return CRITERIA[name].build(limits)


def prepare(name: str, imp: tp.importance.Importance, model: nn.Module, train: Dataset, batches: int, seed: int,
            task: Task = CLASSIFICATION) -> None:
    """Compute what criterion ``name`` reads, on ``batches`` calibration batches of ``train`` with the task's loss;
    no-op if it reads none."""
    step = CRITERIA[name].prepare
    if step is not None:
        step(imp, model, train, batches, seed, task)
