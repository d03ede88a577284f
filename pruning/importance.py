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

IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    # Group magnitude (Han et al. 2015, grouped over coupled layers as in Fang et al. 2023, DepGraph).
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    # First-order Taylor |w * dL/dw| (Molchanov et al. 2019).
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    # Optimal Brain Damage: diagonal Hessian approximated by squared per-sample gradients (LeCun et al. 1989).
    "hessian": lambda: tp.importance.GroupHessianImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}


def make_importance(name: str) -> tp.importance.Importance:
    """A fresh importance estimator for criterion ``name``."""
    if name not in IMPORTANCES:
        raise ConfigError(f'Invalid "prune.criterion": {name!r} (valid: {", ".join(IMPORTANCES)})')
    return IMPORTANCES[name]()


def prepare_importance(imp: tp.importance.Importance, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       batches: int, batch_size: int, seed: int) -> None:
    """Compute what a gradient criterion reads, on ``batches`` random training batches; no-op for the others.

    Taylor reads ``param.grad`` (summed over the batches); Hessian accumulates squared per-sample gradients.
    """
    if not isinstance(imp, tp.importance.GroupTaylorImportance | tp.importance.GroupHessianImportance):
        return
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
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
