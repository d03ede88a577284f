"""The loss-change "oracle" criterion and the rank correlation of any criterion with it.

Importance of a channel = L(W with that channel removed) - L(W), measured exactly on a calibration batch
(Molchanov et al. 2019 call the squared version "true importance"; here the signed increase is kept, so a channel
whose removal *lowers* the loss ranks below all others). One forward pass per channel: affordable on small nets, and
bounded by ``max_channels`` / ``max_seconds`` (per pruning step) with an error that says which to raise.

Removal is simulated by zeroing, in every layer of the channel's dependency group, the weights that produce or
consume it (conv/linear out-rows and in-columns, BatchNorm scale and shift): with BatchNorm's affine set to zero the
channel's output is exactly 0, which is what removing it does to the layers downstream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch_pruning._helpers import to_plain_idxs

from pruning.counting import example_input
from pruning.data import forward
from pruning.dependency import prunable_groups
from pruning.errors import PruningError

# producers (rows of weight and bias; BatchNorm's affine) and consumers (input columns of weight)
_OUT = {tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels, tp.prune_linear_out_channels,
        tp.prune_batchnorm_out_channels, tp.prune_batchnorm_in_channels}
_IN = {tp.prune_conv_in_channels, tp.prune_linear_in_channels}


# The oracle's default bounds per pruning step (params.yaml's oracle_max_* ship these; a test holds them equal).
MAX_CHANNELS = 4096  # loss evaluations: one per channel scored
MAX_SECONDS = 600.0


class LossChangeImportance(tp.importance.Importance):
    """torch-pruning importance whose score is the measured loss increase when a channel is removed."""

    def __init__(self, max_channels: int = MAX_CHANNELS, max_seconds: float = MAX_SECONDS) -> None:
        self.max_channels = max_channels
        self.max_seconds = max_seconds
        self._model: nn.Module | None = None
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._base = 0.0
        self._evaluated = 0
        self._spent = 0.0

    def bind(self, model: nn.Module, x: Any, y: torch.Tensor, loss: Callable[..., torch.Tensor] = F.cross_entropy
             ) -> None:
        """Measure ``loss`` on ``(x, y)`` with ``model`` (the model being pruned); resets the budget."""
        self._model, self._batch, self._loss_fn = model, (x, y), loss
        self._base = self._loss()
        self._evaluated, self._spent = 0, 0.0

    @torch.no_grad()
    def _loss(self) -> float:
        assert self._model is not None and self._batch is not None, "bind() the model and a batch first"
        self._model.eval()
        x, y = self._batch
        return self._loss_fn(forward(self._model, x), y).item()

    def _charge(self, channels: int) -> None:
        self._evaluated += channels
        if self._evaluated > self.max_channels:
            raise PruningError(f"the loss_change criterion needs more than {self.max_channels} loss evaluations on this "
                               "model: raise the limit, or use another criterion", field="oracle_max_channels")
        if self._spent > self.max_seconds:
            raise PruningError(f"the loss_change criterion took longer than {self.max_seconds:g} s on this model: raise "
                               "the limit, or use another criterion", field="oracle_max_seconds")

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor:
        """One score per channel of the group's root layer (indexed like the root's idxs)."""
        start = time.perf_counter()
        n = len(group[0].idxs)
        self._charge(n)
        # per layer of the group: which of its indices carry root channel r
        items = []
        for i, (dep, idxs) in enumerate(group):
            fn, layer = dep.pruning_fn, dep.layer
            if fn not in _OUT | _IN:
                continue  # element-wise ops, poolings: nothing to zero
            if fn in _IN and isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1:
                continue  # a depthwise conv's input is its output channel, zeroed through the out-direction entry
            items.append((layer, fn in _OUT, list(zip(to_plain_idxs(idxs), group[i].root_idxs, strict=True))))
        scores = torch.zeros(n)
        for r in range(n):
            saved = []
            for layer, producer, pairs in items:
                rows = [k for k, root in pairs if root == r]
                if not rows:
                    continue
                if producer:  # the channel's own weights: weight rows, bias, BatchNorm scale and shift
                    views = [p.data for p in (layer.weight, layer.bias) if p is not None]
                else:  # a consumer: the input columns that read the channel (weight is (out, in, ...))
                    views = [layer.weight.data.transpose(0, 1)]
                for view in views:
                    saved.append((view, rows, view[rows].clone()))
                    view[rows] = 0
            scores[r] = self._loss() - self._base
            for view, rows, old in saved:
                view[rows] = old
        self._spent += time.perf_counter() - start
        return scores


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    rho = spearmanr(a.numpy(), b.numpy()).statistic
    return float(rho) if rho == rho else 0.0  # a constant score (e.g. all equal) has no rank order


def oracle_correlation(model: nn.Module, input_shape: tuple[int, ...], criterion: tp.importance.Importance,
                       oracle: LossChangeImportance, ignored: list[nn.Module]) -> dict[str, float]:
    """Spearman rank correlation between ``criterion`` and the oracle, per prunable group (by root layer name).

    The criterion must be prepared already (gradients for taylor/hessian) and the oracle bound to a batch.
    """
    dg = tp.DependencyGraph().build_dependency(model, example_input(input_shape))
    out = {}
    for found in prunable_groups(dg, model, ignored):
        if found.channels < 3:
            continue
        out[found.name] = _spearman(criterion(found.group).float().cpu(), oracle(found.group))
    return out
