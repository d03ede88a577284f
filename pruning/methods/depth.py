"""Depth pruning: remove whole residual blocks, each replaced by its shortcut, or whole transformer layers.

A residual block computes ``y = S(x) + F(x)`` (He et al. 2016); when ``F`` contributes little, the block can go and
the network keeps working — trained ResNets degrade gracefully when single blocks are deleted (Veit et al. 2016,
"Residual networks behave like ensembles of relatively shallow networks"). Removing a block takes away all of its
MACs and parameters at once, which channel pruning cannot do; the two combine (the channel method's
``depth_blocks``): remove blocks first, then trace the shallower model with torch-pruning and remove channels.

Blocks are found from the graph (:mod:`pruning.residual`), so this works on any model whose residual adds torch.fx
can see, not only on the zoo's. A transformer's layers (:mod:`pruning.layers`: an encoder's or decoder's layer list)
are its blocks: the layer list shrinks. Every block is scored once on a calibration sample; the ``blocks`` lowest go.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import fx, nn

from pruning import attention, layers, residual
from pruning.checkpoint import Edit, blocks_edit, layers_edit
from pruning.data import Batch, calibration_sample, forward
from pruning.errors import PruningError
from pruning.methods.base import Context, Outcome, step_record
from pruning.schema import Section
from pruning.training import recalibrate_batchnorm

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

log = logging.getLogger(__name__)

_EPS = 1e-12  # keeps the norm ratio finite when a shortcut output is all zeros

BlockCriterion = Literal["loss_change", "norm", "block_influence"]


class Config(Section):
    """Remove ``blocks`` residual blocks, ranked by ``criterion`` on ``calibration_batches`` training batches."""

    method: Literal["depth"] = "depth"
    blocks: int = Field(1, ge=1, le=100_000, description="residual blocks (each becomes its shortcut) or transformer "
                        "layers to remove")
    criterion: BlockCriterion = Field("loss_change", description="loss_change (measured loss increase when the block "
                                      "alone is removed) | norm (mean |F(x)| / |shortcut(x)|) | block_influence (1 - "
                                      "cosine of the block's input and output: ShortGPT)")
    calibration_batches: int = Field(4, ge=1, le=100_000, description="batches of 64 training samples for the scores and "
                                     "BatchNorm recalibration")
    bn_recalibration: bool = Field(True, description="re-estimate BatchNorm statistics after the removal")


def mean_loss(model: nn.Module, sample: Batch, loss: Loss, batch_size: int = 512) -> float:
    """``loss`` of ``model`` on ``sample`` in eval mode, without gradients (modes restored)."""
    with residual.evaluating(model):
        return _mean_loss(model, sample, loss, batch_size)


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
    """Stands in for a residual add ``s + f`` and records, per sample, the norms of both operands and the cosine
    between the shortcut and the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.branch: list[torch.Tensor] = []
        self.shortcut: list[torch.Tensor] = []
        self.cosine: list[torch.Tensor] = []

    def forward(self, s: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        # figures are taken here: a later in-place op (ReLU(inplace=True)) could overwrite a kept tensor
        self.branch.append(f.flatten(1).norm(dim=1))
        self.shortcut.append(s.flatten(1).norm(dim=1))
        self.cosine.append(F.cosine_similarity(s.flatten(1), (s + f).flatten(1), dim=1))
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
    return {name: (torch.cat(p.branch) / (torch.cat(p.shortcut) + _EPS)).mean().item()
            for name, p in _probed_pass(model, blocks, sample, batch_size).items()}


def _influence(model: nn.Module, blocks: dict[str, residual.Residual], sample: Batch, loss: Loss,
               batch_size: int = 512) -> dict[str, float]:
    """Block influence (ShortGPT, Men et al. 2024): mean over samples of 1 - cos(S(x), S(x) + F(x)), how far the
    block turns the representation it passes on. One forward pass, no labels."""
    return {name: (1 - torch.cat(p.cosine)).mean().item()
            for name, p in _probed_pass(model, blocks, sample, batch_size).items()}


def _probed_pass(model: nn.Module, blocks: dict[str, residual.Residual], sample: Batch,
                 batch_size: int) -> dict[str, _Probe]:
    """One pass over ``sample`` with every block's add replaced by a :class:`_Probe`; the probes by block name."""
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
    return probes


CRITERIA: dict[str, Callable[[nn.Module, dict[str, residual.Residual], Batch, Loss], dict[str, float]]] = {
    "loss_change": _loss_change,
    "norm": _norm_ratio,
    "block_influence": _influence,
}


def _layer_loss_change(model: nn.Module, found: dict[str, nn.Module], sample: Batch, loss: Loss) -> dict[str, float]:
    """A transformer layer's loss change: the loss with the layer passing its input through, minus the dense loss."""
    base = _mean_loss(model, sample, loss)
    scores = {}
    for name, layer in found.items():
        with layers.skipped(layer):
            scores[name] = _mean_loss(model, sample, loss) - base
    return scores


def _layer_figures(model: nn.Module, found: dict[str, nn.Module], sample: Batch,
                   figure: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch_size: int = 512
                   ) -> dict[str, float]:
    """Mean over every token of every sample of ``figure(input states, output states)`` (per token), per layer, in one
    pass; padding tokens (attention_mask 0 in the inputs) left out."""
    sums = {name: 0.0 for name in found}
    counts = {name: 0 for name in found}
    mask: list[torch.Tensor | None] = [None]

    def see(name: str, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        values = figure(h_in, h_out)  # (batch, tokens)
        m = mask[0]
        keep = m.bool() if m is not None and m.shape == values.shape else torch.ones_like(values, dtype=torch.bool)
        sums[name] += values[keep].sum().item()
        counts[name] += int(keep.sum())

    with layers.observed(found, see):
        for i in range(0, len(sample), batch_size):
            x = sample.take(slice(i, i + batch_size)).x
            mask[0] = x.get("attention_mask") if isinstance(x, dict) else None
            forward(model, x)
    return {name: sums[name] / max(counts[name], 1) for name in found}


LAYER_CRITERIA: dict[str, Callable[[nn.Module, dict[str, nn.Module], Batch, Loss], dict[str, float]]] = {
    "loss_change": _layer_loss_change,
    "norm": lambda model, found, sample, loss: _layer_figures(
        model, found, sample, lambda a, b: (b - a).norm(dim=-1) / (a.norm(dim=-1) + _EPS)),
    "block_influence": lambda model, found, sample, loss: _layer_figures(
        model, found, sample, lambda a, b: 1 - F.cosine_similarity(a, b, dim=-1)),
}


def lowest(scores: dict[str, float], n: int) -> list[str]:
    """The ``n`` lowest-scoring names, lowest first; ties keep forward order (``scores``' order), so the choice is
    deterministic."""
    rank = {name: i for i, name in enumerate(scores)}
    return sorted(scores, key=lambda k: (scores[k], rank[k]))[:n]


def layer_scores(model: nn.Module, sample: Batch, criterion: str = "loss_change",
                 loss: Loss = F.cross_entropy) -> dict[str, float]:
    """Score every transformer layer (:func:`pruning.layers.find`); lower = more removable. The model is left as it
    was (mode included); scored without a key/value cache."""
    with residual.evaluating(model), attention.traceable(model):
        return LAYER_CRITERIA[criterion](model, layers.find(model), sample, loss)


def prune_depth(model: nn.Module, sample: Batch, n: int, criterion: str, spec: Any,
                loss: Loss = F.cross_entropy) -> tuple[nn.Module, list[str], Edit | None]:
    """Remove the ``n`` lowest-scoring transformer layers, if the model has layer stacks, else the ``n`` lowest
    residual blocks (:func:`prune_blocks`). Returns (the model, the removed names lowest score first, the model file's
    edit or None when nothing was removed)."""
    found = layers.find(model)
    if not found:
        model, names = prune_blocks(model, sample, n, criterion, spec, loss)
        return model, names, blocks_edit(names) if names else None
    if not 0 <= n < len(found):
        raise ValueError(f"cannot remove {n} transformer layers: the model has {len(found)} ({', '.join(found)}); "
                         f"choose 0..{len(found) - 1}")
    if n == 0:
        return model, [], None
    scores = layer_scores(model, sample, criterion, loss)
    names = lowest(scores, n)
    layers.remove(model, names)
    log.info("depth pruning (%s): removed transformer layers %s (scores %s)", criterion, names,
             ", ".join(f"{scores[k]:.4g}" for k in names))
    return model, names, layers_edit(names)


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
    with residual.evaluating(model):
        return CRITERIA[criterion](model, blocks, sample, loss)


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
    names = lowest(scores, n_blocks)
    model = residual.remove(model, names, shape, blocks)
    log.info("depth pruning (%s): removed %s (scores %s)", criterion, names, ", ".join(f"{scores[n]:.4g}" for n in names))
    return model, names


def apply(model: nn.Module, cfg: Config, ctx: Context) -> Outcome:
    """Remove ``cfg.blocks`` blocks, then (optionally) recalibrate BatchNorm."""
    data = ctx.data
    steps = [step_record(0, 0.0, model, ctx)]
    sample = calibration_sample(data.calibration_split, cfg.calibration_batches, ctx.seed)
    total = len(layers.find(model)) or len(residual.find(model, data.spec))
    try:
        model, names, edit = prune_depth(model, sample, cfg.blocks, cfg.criterion, data.spec, ctx.task.loss)
    except ValueError as exc:
        raise PruningError(str(exc), field="blocks") from None
    if cfg.bn_recalibration:
        recalibrate_batchnorm(model, data.calibration_split, cfg.calibration_batches, ctx.seed, ctx.device)
    steps.append(step_record(1, len(names) / total, model, ctx))  # ratio: share of the blocks
    return Outcome(model, [edit] if edit else [], steps, {"removed_blocks": names, "criterion": cfg.criterion})
