"""Unstructured magnitude pruning (Han et al. 2015, "Learning both Weights and Connections").

Individual weights with the smallest |w| are zeroed, over all Conv/Linear layers at once (``global``) or per layer
(``layer``). The masks live in ``torch.nn.utils.prune``'s forward pre-hooks (``weight = weight_orig * weight_mask``),
so they stay enforced while the model trains; :func:`make_permanent` folds them into plain tensors with exact zeros.

What this buys, honestly: the tensors keep their shapes and dense kernels (torch, ONNX Runtime) multiply the zeros
like any other value, so a 90 %-sparse model is *not* faster — MACs and latency stay those of the dense model. The
gain is storage: :func:`pruning.sparse.to_sparse` keeps only the non-zeros plus their indices (CSR, CSC or COO);
the evaluate stage reports both sizes. Speed needs kernels that skip zeros (torch's CSR matmul does, for Linear layers
only; the convolutions of torch and ONNX Runtime used here do not) or structured pruning, which removes whole channels
(:mod:`.channel`).

In the pipeline the masked weights stay zero through fine-tuning: the model file records them as a ``mask`` edit,
and the finetune stage re-zeroes them after every step (:func:`pruning.checkpoint.constraints`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils import prune

from pruning import dependency
from pruning.checkpoint import mask_edit
from pruning.methods.base import Context, Outcome, step_record
from pruning.schema import Section
from pruning.training import recalibrate_batchnorm

SCOPES = ("global", "layer")


class Config(Section):
    """Zero the ``sparsity`` share of the smallest-magnitude Conv/Linear weights."""

    method: Literal["unstructured"] = "unstructured"
    sparsity: float = Field(0.9, gt=0, lt=1, description="share of the Conv/Linear weights set to zero")
    scope: Literal["global", "layer"] = Field("global", description="global: one ranking over all layers (layers end "
                                              "up with different sparsities) | layer: each layer its share")
    ignored_layers: list[str] = Field(default_factory=list, description="module names left dense")
    calibration_batches: int = Field(4, ge=1, le=100_000, description="batches of 64 for BatchNorm recalibration")
    bn_recalibration: bool = Field(True, description="re-estimate BatchNorm statistics after zeroing")


def prunable_layers(model: nn.Module, ignored: Sequence[nn.Module] = ()) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv/Linear layer not in ``ignored`` (compared by identity)."""
    skip = {id(m) for m in ignored}
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and id(m) not in skip]


def _effective_weight(module: nn.Module) -> Tensor:
    """The weight as the next forward will see it.

    While pruned, ``module.weight`` is a plain attribute recomputed only by the forward pre-hook, i.e. the value from
    before the last optimizer step; ``weight_orig * weight_mask`` is current.
    """
    if hasattr(module, "weight_orig"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def _masked_count(module: nn.Module) -> int:
    mask = getattr(module, "weight_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "global", ignored: Sequence[nn.Module] = ()) -> None:
    """Mask the smallest-|w| weights of every Conv/Linear layer until ``sparsity`` of them are zero.

    ``sparsity`` is the target share of masked weights (cumulative): calling again with a higher value extends the
    existing masks (torch's ``PruningContainer`` only ranks the still-unmasked weights), never un-prunes. Biases and
    BatchNorm are never pruned. Exactly ``round(sparsity * n)`` weights are masked, over all layers (``global``) or
    in each layer of n weights (``layer``).

    Args:
        model: modified in place; masks are enforced by forward pre-hooks until :func:`make_permanent`.
        sparsity: in [0, 1).
        scope: ``global`` (one ranking across layers: layers end up with different sparsities) or ``layer``.
        ignored: modules left dense (e.g. the classifier).
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"Invalid sparsity: {sparsity} (must be in [0, 1))")
    if scope not in SCOPES:
        raise ValueError(f"Invalid scope: {scope!r} (must be one of {', '.join(SCOPES)})")
    layers = [m for _, m in prunable_layers(model, ignored)]
    if not layers:
        raise ValueError("the model has no Conv/Linear weight to prune (all of them ignored?)")
    # ranked on the current effective weights (see _effective_weight); torch takes |.| itself (L1Unstructured)
    scores = {(m, "weight"): _effective_weight(m) for m in layers}
    if scope == "global":
        total = sum(m.weight.numel() for m in layers)
        # an int amount is an exact count of *additional* weights; a float would be a share of the unmasked ones
        extra = max(round(sparsity * total) - sum(_masked_count(m) for m in layers), 0)
        prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured,
                                  importance_scores=scores, amount=extra)
        return
    for m in layers:
        extra = max(round(sparsity * m.weight.numel()) - _masked_count(m), 0)
        prune.l1_unstructured(m, "weight", amount=extra, importance_scores=scores[(m, "weight")])


def make_permanent(model: nn.Module) -> None:
    """Fold every pruning mask into its weight: plain parameters with exact zeros, no ``*_orig``/``*_mask``, no hooks."""
    for module in model.modules():
        for name, _ in list(module.named_parameters(recurse=False)):
            if name.endswith("_orig") and hasattr(module, name[: -len("_orig")] + "_mask"):
                prune.remove(module, name[: -len("_orig")])


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Share of exact zeros in each Conv/Linear weight, by module name."""
    return {n: float((_effective_weight(m) == 0).float().mean()) for n, m in prunable_layers(model)}


def weight_sparsity(model: nn.Module) -> float:
    """Share of exact zeros over all Conv/Linear weights (biases and BatchNorm excluded)."""
    weights = [_effective_weight(m) for _, m in prunable_layers(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)




def masked_layers(model: nn.Module) -> list[str]:
    """Names of the Conv/Linear layers with at least one zero weight (what a ``mask`` edit records)."""
    return [n for n, m in prunable_layers(model) if bool((_effective_weight(m) == 0).any())]


def apply(model: nn.Module, cfg: Config, ctx: Context) -> Outcome:
    """Magnitude-prune to ``cfg.sparsity``, fold the masks into the weights, recalibrate BatchNorm."""
    data = ctx.data
    steps = [step_record(0, 0.0, model, ctx)]
    magnitude_prune(model, cfg.sparsity, cfg.scope, dependency.modules_named(model, cfg.ignored_layers))
    make_permanent(model)
    if cfg.bn_recalibration:
        recalibrate_batchnorm(model, data.calibration_split, cfg.calibration_batches, ctx.seed, ctx.device)
    steps.append(step_record(1, weight_sparsity(model), model, ctx))
    report = {"sparsity": cfg.sparsity, "scope": cfg.scope, "weight_sparsity": weight_sparsity(model),
              "layer_sparsity": layer_sparsity(model)}
    return Outcome(model, [mask_edit(masked_layers(model))], steps, report)
