"""Depth pruning: remove whole residual blocks, each replaced by its shortcut.

A residual block computes ``y = S(x) + F(x)`` (He et al. 2016); when ``F`` contributes little, the block can go and
the network keeps working — trained ResNets degrade gracefully when single blocks are deleted (Veit et al. 2016,
"Residual networks behave like ensembles of relatively shallow networks"). Removing a block takes away all of its
MACs and parameters at once, which channel pruning cannot do; the two combine (the channel method's
``depth_blocks``): remove blocks first, then trace the shallower model with torch-pruning and remove channels.

Blocks are found from the graph (:mod:`pruning.residual`), so this works on any model whose residual adds torch.fx
can see, not only on the zoo's. Every block is scored once on a calibration sample; the ``blocks`` lowest go.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import fx, nn

from pruning import residual
from pruning.checkpoint import blocks_edit
from pruning.data import Batch, calibration_sample, forward
from pruning.errors import PruningError
from pruning.methods.base import Context, Outcome, step_record
from pruning.schema import Section
from pruning.training import recalibrate_batchnorm

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

log = logging.getLogger(__name__)

_EPS = 1e-12  # keeps the norm ratio finite when a shortcut output is all zeros

BlockCriterion = Literal["loss_change", "norm"]


class Config(Section):
    """Remove ``blocks`` residual blocks, ranked by ``criterion`` on ``calibration_batches`` training batches."""

    method: Literal["depth"] = "depth"
    blocks: int = Field(1, ge=1, le=100_000, description="residual blocks to remove (each becomes its shortcut)")
    criterion: BlockCriterion = Field("loss_change", description="loss_change (measured loss increase when the block "
                                      "alone is removed) | norm (mean |F(x)| / |shortcut(x)|)")
    calibration_batches: int = Field(4, ge=1, le=100_000, description="batches of 64 training samples for the scores and "
                                     "BatchNorm recalibration")
    bn_recalibration: bool = Field(True, description="re-estimate BatchNorm statistics after the removal")


def _mean_loss(model: nn.Module, sample: Batch, loss: Loss, batch_size: int = 512) -> float:
    total = 0.0
    for i in range(0, len(sample), batch_size):
        part = sample.take(slice(i, i + batch_size))
        total += loss(forward(model, part.x), part.y).item() * len(part)
    return total / len(sample)


def _loss_change(model: nn.Module, blocks: dict[str, residual.Residual], sample: Batch, loss: Loss) -> dict[str, float]:
    """Loss with the block alone removed minus the dense loss: a lesion study per block (Veit et al. 2016, §5).

    Exact for what removal does to the loss, at the cost of one evaluation of the sample per block.
    """
    base = _mean_loss(model, sample, loss)
    scores = {}
    for name, b in blocks.items():
        owner = model.get_submodule(b.owner)
        with residual.swapped(model, {b.owner: residual.rewritten(owner, {b.node})}) as lesioned:
            scores[name] = _mean_loss(lesioned.eval(), sample, loss) - base
    return scores


class _Probe(nn.Module):
    """Stands in for a residual add ``s + f`` and records the per-sample norms of both operands."""

    def __init__(self) -> None:
        super().__init__()
        self.branch: list[torch.Tensor] = []
        self.shortcut: list[torch.Tensor] = []

    def forward(self, s: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        # norms are taken here: a later in-place op (ReLU(inplace=True)) could overwrite a kept tensor
        self.branch.append(f.flatten(1).norm(dim=1))
        self.shortcut.append(s.flatten(1).norm(dim=1))
        return s + f


def _probed(probes: dict[str, _Probe], name: str) -> Callable[[fx.GraphModule, fx.Node, fx.Node, fx.Node], fx.Node]:
    def replace(gm: fx.GraphModule, add: fx.Node, s: fx.Node, f: fx.Node) -> fx.Node:
        target = f"_probe_{add.name}"
        gm.add_submodule(target, probes[name])
        return gm.graph.call_module(target, (s, f))
    return replace


def _norm_ratio(model: nn.Module, blocks: dict[str, residual.Residual], sample: Batch, loss: Loss,
                batch_size: int = 512) -> dict[str, float]:
    """Mean over samples of ||F(x)|| / ||S(x)||: how much the block changes its input's representation.

    Residual blocks of a trained network mostly refine their input by a small step (Jastrzebski et al. 2018,
    "Residual connections encourage iterative inference", measure this same ratio); a small ratio means the block
    is close to its shortcut. One forward pass for all blocks, with no labels used.
    """
    probes = {name: _Probe() for name in blocks}
    owners = {}
    for owner, nodes in residual.group_by_owner(list(blocks.values())).items():
        names = {b.node: n for n, b in blocks.items() if b.owner == owner}
        module = model.get_submodule(owner)

        def replace(gm: fx.GraphModule, add: fx.Node, s: fx.Node, f: fx.Node, names: dict = names) -> fx.Node:
            return _probed(probes, names[add.name])(gm, add, s, f)

        owners[owner] = residual.rewritten(module, nodes, replace)
    with residual.swapped(model, owners) as probed:
        for i in range(0, len(sample), batch_size):
            forward(probed.eval(), sample.take(slice(i, i + batch_size)).x)
    return {name: (torch.cat(p.branch) / (torch.cat(p.shortcut) + _EPS)).mean().item() for name, p in probes.items()}


CRITERIA: dict[str, Callable[[nn.Module, dict[str, residual.Residual], Batch, Loss], dict[str, float]]] = {
    "loss_change": _loss_change,
    "norm": _norm_ratio,
}


@torch.no_grad()
def block_scores(model: nn.Module, sample: Batch, criterion: str = "loss_change", input_shape: Any = None,
                 blocks: dict[str, residual.Residual] | None = None, loss: Loss = F.cross_entropy
                 ) -> dict[str, float]:
    """Score every residual block; lower = more removable. The model is left exactly as it was (mode included).

    Returns ``{block name: score}`` for every block :func:`pruning.residual.find` sees (``blocks``, if the caller has
    them already).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown depth criterion {criterion!r} (valid: {', '.join(CRITERIA)})")
    if blocks is None:
        blocks = residual.find(model, input_shape if input_shape is not None else sample.take(slice(0, 1)).x)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return CRITERIA[criterion](model, blocks, sample, loss)
    finally:
        for m, training in modes.items():
            m.training = training


def prune_blocks(model: nn.Module, sample: Batch, n_blocks: int, criterion: str = "loss_change",
                 input_shape: Any = None, loss: Loss = F.cross_entropy) -> tuple[nn.Module, list[str]]:
    """Remove the ``n_blocks`` lowest-scoring blocks. Returns (the model, the removed names lowest score first).

    Greedy and one-shot: every block is scored once on the full model and the n lowest go together. Blocks interact
    (removing one changes what the next sees), so rescoring after each removal could pick differently; it would cost
    n rounds of scoring.

    Raises:
        ValueError: ``n_blocks`` is negative or exceeds the blocks the model has, or the criterion is unknown.
    """
    shape = input_shape if input_shape is not None else sample.take(slice(0, 1)).x
    blocks = residual.find(model, shape)
    if not 0 <= n_blocks <= len(blocks):
        raise ValueError(f"cannot remove {n_blocks} blocks: the model has {len(blocks)} removable "
                         f"({', '.join(blocks) or 'none'}); choose 0..{len(blocks)}")
    if n_blocks == 0:
        return model, []
    scores = block_scores(model, sample, criterion, shape, blocks, loss)
    rank = {name: i for i, name in enumerate(blocks)}  # ties keep forward order, so the choice is deterministic
    names = sorted(blocks, key=lambda n: (scores[n], rank[n]))[:n_blocks]
    model = residual.remove(model, names, shape, blocks)
    log.info("depth pruning (%s): removed %s (scores %s)", criterion, names, ", ".join(f"{scores[n]:.4g}" for n in names))
    return model, names


def apply(model: nn.Module, cfg: Config, ctx: Context) -> Outcome:
    """Remove ``cfg.blocks`` blocks, then (optionally) recalibrate BatchNorm."""
    data = ctx.data
    steps = [step_record(0, 0.0, model, ctx)]
    sample = calibration_sample(data.calibration_split, cfg.calibration_batches, ctx.seed)
    total = len(residual.find(model, data.spec))
    try:
        model, names = prune_blocks(model, sample, cfg.blocks, cfg.criterion, data.spec, ctx.task.loss)
    except ValueError as exc:
        raise PruningError(str(exc), field="blocks") from None
    if cfg.bn_recalibration:
        recalibrate_batchnorm(model, data.calibration_split, cfg.calibration_batches, ctx.seed, ctx.device)
    steps.append(step_record(1, len(names) / total, model, ctx))  # ratio: share of the blocks
    return Outcome(model, [blocks_edit(names)], steps, {"removed_blocks": names, "criterion": cfg.criterion})
