"""Pruning criteria: an explicit registry from params.yaml names to torch-pruning importance estimators.

Gradient-based criteria need gradients on the model before ``pruner.step()``; :func:`prepare_importance` computes them
on calibration batches of the training split.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from pruning.errors import ConfigError
from pruning.oracle import LossChangeImportance

IMPORTANCES: dict[str, Callable[..., tp.importance.Importance]] = {
    # Group magnitude (Han et al. 2015, grouped over coupled layers as in Fang et al. 2023, DepGraph).
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    # First-order Taylor |w * dL/dw| (Molchanov et al. 2019).
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    # Optimal Brain Damage: diagonal Hessian approximated by squared per-sample gradients (LeCun et al. 1989).
    "hessian": lambda: tp.importance.GroupHessianImportance(),
    # BatchNorm scale |gamma| of the channel (Liu et al. 2017, network slimming).
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    # Layer-adaptive magnitude (Lee et al. 2021): magnitude normalised by the magnitudes above it in its layer.
    "lamp": lambda: tp.importance.LAMPImportance(),
    "random": lambda: tp.importance.RandomImportance(),
    # The measured loss increase when the channel is removed (the "oracle"; pruning/oracle.py).
    "loss_change": lambda max_channels=4096, max_seconds=600.0: LossChangeImportance(max_channels, max_seconds),
}


def make_importance(name: str, max_channels: int = 4096, max_seconds: float = 600.0) -> tp.importance.Importance:
    """A fresh importance estimator for criterion ``name`` (the limits bound the loss_change oracle only)."""
    if name not in IMPORTANCES:
        raise ConfigError(f'Invalid "prune.criterion": {name!r} (valid: {", ".join(IMPORTANCES)})')
    if name == "loss_change":
        return IMPORTANCES[name](max_channels, max_seconds)
    return IMPORTANCES[name]()


def prepare_importance(imp: tp.importance.Importance, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       batches: int, batch_size: int, seed: int) -> None:
    """Compute what a data-driven criterion reads, on ``batches`` random training batches; no-op for the others.

    Taylor reads ``param.grad`` (summed over the batches); Hessian accumulates squared per-sample gradients;
    loss_change measures on the same samples as one batch.
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    if isinstance(imp, LossChangeImportance):
        idx = order[: batches * batch_size]
        imp.bind(model, x[idx], y[idx])
        return
    if not isinstance(imp, tp.importance.GroupTaylorImportance | tp.importance.GroupHessianImportance):
        return
    model.eval()  # gradients of the deployed (eval-mode) function; BatchNorm statistics stay as trained
    model.zero_grad(set_to_none=True)
    if isinstance(imp, tp.importance.GroupHessianImportance):
        imp.zero_grad()
    for b in range(batches):
        idx = order[(b * batch_size) % len(x):][:batch_size]
        if isinstance(imp, tp.importance.GroupHessianImportance):
            losses = F.cross_entropy(model(x[idx]), y[idx], reduction="none")
            for i, sample_loss in enumerate(losses):
                model.zero_grad(set_to_none=True)
                sample_loss.backward(retain_graph=i < len(losses) - 1)
                imp.accumulate_grad(model)
        else:
            F.cross_entropy(model(x[idx]), y[idx]).backward()
