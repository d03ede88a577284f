"""Depth pruning: remove whole residual blocks, each replaced by its shortcut.

A residual block computes ``y = x + F(x)`` (He et al. 2016); when ``F`` contributes little, the block can go and the
network keeps working — trained ResNets degrade gracefully when single blocks are deleted (Veit et al. 2016,
"Residual networks behave like ensembles of relatively shallow networks"). Removing a block takes away all of its
MACs and parameters at once, which channel pruning (``pruning.surgery``) cannot do; the two combine: remove blocks
first, then trace the shallower model with torch-pruning and remove channels.

A removal is recorded as the blocks' qualified names, in removal order: ``remove_blocks(fresh_model, names)`` rebuilds
the same architecture on a freshly built dense model, so a loader replays the names before torch-pruning's history.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pruning.errors import ModelError
from pruning.zoo.mobilenet import InvertedResidual
from pruning.zoo.resnet import BasicBlock

log = logging.getLogger(__name__)

_EPS = 1e-12  # keeps the norm ratio finite when a shortcut output is all zeros


def _is_removable(module: nn.Module) -> bool:
    # An InvertedResidual without its residual (stride 2 or a width change) has no shortcut to fall back on.
    return isinstance(module, BasicBlock) or (isinstance(module, InvertedResidual) and module.use_residual)


def removable_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Residual blocks that can be replaced by their shortcut without changing the model's output shape.

    Args:
        model: any model; the zoo's ``BasicBlock`` (every one) and residual ``InvertedResidual`` are recognised.

    Returns:
        ``{qualified name in model.named_modules(): block}`` in forward (registration) order. The root module itself
        is never listed: it has no parent to hold its replacement.
    """
    return {name: m for name, m in model.named_modules() if name and _is_removable(m)}


def shortcut_of(block: nn.Module) -> nn.Module:
    """What ``block`` becomes once removed: its forward with the residual branch F taken out.

    The returned module reuses the block's own shortcut layers (same weights), so no retraining is needed for them.

    Args:
        block: a removable block (see :func:`removable_blocks`).

    Returns:
        ``nn.Identity()`` for an identity-shortcut ``BasicBlock`` and for ``InvertedResidual``;
        ``nn.Sequential(conv1x1, BN, ReLU)`` for a downsampling ``BasicBlock``.
    """
    if isinstance(block, BasicBlock):
        if isinstance(block.shortcut, nn.Identity):
            # forward = relu(F(x) + x). Without F it would be relu(x), and x already comes out of a ReLU (the stem's,
            # or the previous block's final one, or a replacement below which ends in one), so relu(x) == x: Identity
            # is exact for the shortcut path and adds no op to the exported graph.
            return nn.Identity()
        # Downsampling block: the 1x1 conv + BN shortcut carries the stride and the width change, so it must stay;
        # the ReLU after the sum stays too, because the shortcut's BN output can be negative.
        return nn.Sequential(*block.shortcut, nn.ReLU(inplace=True))
    if isinstance(block, InvertedResidual) and block.use_residual:
        # forward = x + F(x) with a linear bottleneck (no activation after the sum, Sandler et al. 2018): without F
        # the block is exactly the identity.
        return nn.Identity()
    raise ValueError(f"{type(block).__name__} is not a removable residual block (BasicBlock or residual InvertedResidual)")


def _parent_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, attr = _parent_and_attr(model, name)
    # Module.__setattr__ overwrites the existing _modules entry, so an nn.Sequential keeps its order ("3" stays 4th).
    setattr(parent, attr, new)


def remove_blocks(model: nn.Module, names: Sequence[str]) -> None:
    """Replace the named blocks by their shortcuts, in place and in the given order.

    Every name is checked before anything changes, so a bad name leaves the model untouched.

    Args:
        model: the model to shorten.
        names: qualified names from :func:`removable_blocks` (e.g. ``"layers.3"``, ``"features.5"``).

    Raises:
        ValueError: a name is unknown, repeated, or not a removable block; the message lists the removable ones.
    """
    removable = removable_blocks(model)
    modules = dict(model.named_modules())
    seen: set[str] = set()
    for name in names:
        if name not in removable or name in seen:
            why = "no module named" if name not in modules else "repeated block" if name in seen else \
                f"not a removable residual block ({type(modules[name]).__name__})"
            raise ValueError(f"cannot remove {name!r}: {why}; removable blocks: {', '.join(removable) or 'none'}")
        seen.add(name)
    for name in names:
        block = removable[name]
        _replace(model, name, shortcut_of(block).train(block.training))  # new Identity/ReLU take the block's mode


# ----------------------------------------------------------------------------------------------------------------
# Block criteria: lower score = more removable


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    total = 0.0
    for i in range(0, len(x), batch_size):
        total += F.cross_entropy(model(x[i:i + batch_size]), y[i:i + batch_size], reduction="sum").item()
    return total / len(x)


def _loss_change(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Loss with the block alone removed minus the dense loss: a lesion study per block (Veit et al. 2016, §5).

    Exact for what removal does to the loss, at the cost of one evaluation of ``(x, y)`` per block.
    """
    base = _cross_entropy(model, x, y)
    scores: dict[str, float] = {}
    for name, block in removable_blocks(model).items():
        _replace(model, name, shortcut_of(block))
        try:
            scores[name] = _cross_entropy(model, x, y) - base
        finally:  # put the very same block object back, so the model is unchanged even if the forward failed
            _replace(model, name, block)
    return scores


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)  # (N, C, ...) -> (N,)


def _norm_ratio(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
    """Mean over samples of ||F(x)|| / ||shortcut(x)||: how much the block changes its input's representation.

    Residual blocks of a trained network mostly refine their input by a small step (Jastrzebski et al. 2018,
    "Residual connections encourage iterative inference", measure this same ratio); a small ratio means the block
    is close to its shortcut. One forward pass for all blocks, with no labels used (``y`` is ignored).
    """
    del y
    blocks = removable_blocks(model)
    branch: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}
    short: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}

    def store(into: list[torch.Tensor], take_input: bool) -> Callable[..., None]:
        # Norms are taken inside the hook: later in-place ops (ReLU(inplace=True)) could overwrite a kept tensor.
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            into.append(_per_sample_norm(args[0] if take_input else out))
        return hook

    hooks = []
    for name, block in blocks.items():
        if isinstance(block, BasicBlock):  # F(x) = bn2(conv2(relu(bn1(conv1(x))))), shortcut = block.shortcut(x)
            hooks.append(block.bn2.register_forward_hook(store(branch[name], False)))
            hooks.append(block.shortcut.register_forward_hook(store(short[name], False)))
        else:  # InvertedResidual: F(x) = block.block(x), shortcut(x) = x, the block's own input
            hooks.append(block.block.register_forward_hook(store(branch[name], False)))
            hooks.append(block.register_forward_hook(store(short[name], True)))
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return {name: (torch.cat(branch[name]) / (torch.cat(short[name]) + _EPS)).mean().item() for name in blocks}


CRITERIA: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, float]]] = {
    "loss_change": _loss_change,
    "norm": _norm_ratio,
}


@torch.no_grad()
def block_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: str = "loss_change") -> dict[str, float]:
    """Score every removable block; lower = more removable. The model is left exactly as it was (mode included).

    Args:
        model: the model to score, evaluated in eval mode (BatchNorm uses its running statistics).
        x: calibration inputs ``(N, C, ...)``.
        y: their labels ``(N,)`` (read by ``loss_change`` only).
        criterion: ``loss_change`` (cross-entropy with that block alone removed, minus the dense cross-entropy) or
            ``norm`` (mean ||F(x)|| / ||shortcut(x)|| of the residual branch F).

    Returns:
        ``{block name: score}`` for every block of :func:`removable_blocks`.

    Raises:
        ValueError: an unknown criterion (the message lists the valid ones).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown depth criterion {criterion!r} (valid: {', '.join(CRITERIA)})")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return CRITERIA[criterion](model, x, y)
    finally:
        for m, training in modes.items():
            m.training = training


def prune_depth(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_blocks: int, criterion: str = "loss_change",
                input_shape: Sequence[int] | None = None) -> list[str]:
    """Remove the ``n_blocks`` lowest-scoring blocks, in place.

    Greedy and one-shot: every block is scored once on the full model and the n lowest go together. Blocks interact
    (removing one changes what the next sees), so rescoring after each removal could pick differently; it would cost
    n rounds of scoring.

    Args:
        model: the model to shorten.
        x: calibration inputs; y: their labels (see :func:`block_scores`).
        n_blocks: how many blocks to remove (0 removes none).
        criterion: a key of :data:`CRITERIA`.
        input_shape: per-sample shape for the output-shape check; defaults to ``x.shape[1:]``.

    Returns:
        The removed block names in removal order (lowest score first); ``remove_blocks(fresh_model, names)`` replays
        them on a freshly built model.

    Raises:
        ValueError: ``n_blocks`` is negative or exceeds the removable blocks, or the criterion is unknown.
    """
    removable = removable_blocks(model)
    if not 0 <= n_blocks <= len(removable):
        raise ValueError(f"cannot remove {n_blocks} blocks: the model has {len(removable)} removable "
                         f"({', '.join(removable) or 'none'}); choose 0..{len(removable)}")
    scores = block_scores(model, x, y, criterion)
    rank = {name: i for i, name in enumerate(removable)}  # ties keep forward order, so the choice is deterministic
    names = sorted(removable, key=lambda n: (scores[n], rank[n]))[:n_blocks]
    sample = torch.randn(1, *(input_shape if input_shape is not None else x.shape[1:]))
    with torch.no_grad():
        before = _eval_shape(model, sample)
        remove_blocks(model, names)
        after = _eval_shape(model, sample)
    if after != before:  # cannot happen for the zoo's blocks; guards a new block type with a wrong shortcut_of
        raise ModelError(f"removing blocks {names} changed the output shape from {before} to {after}")
    log.info("depth pruning (%s): removed %s (scores %s)", criterion, names, ", ".join(f"{scores[n]:.4g}" for n in names))
    return names


def _eval_shape(model: nn.Module, sample: torch.Tensor) -> tuple[int, ...]:
    training = {m: m.training for m in model.modules()}
    model.eval()
    shape = tuple(model(sample).shape)
    for m, mode in training.items():
        m.training = mode
    return shape
