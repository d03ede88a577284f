"""Dependency-graph channel/filter removal with torch-pruning, MACs counting, and pickle-free model files.

Why a wrapper at all: torch-pruning's ``BasePruner`` takes ~30 arguments and raises bare tracing errors; this module
gives it one typed call, names the layer when something goes wrong, and stores a pruned model as
``(architecture, kwargs, pruning history, state_dict)`` — plain containers that ``torch.load(weights_only=True)`` reads.
Reloading replays the history on a freshly built dense model (torch-pruning's ``DG.load_pruning_history``).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner.algorithms.scheduler import linear_scheduler

from pruning.errors import ConfigError, GraphTraceError, ModelError
from pruning.zoo import build_model

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def example_input(input_shape: Sequence[int]) -> torch.Tensor:
    """A batch-of-one random input used for graph tracing and MACs counting."""
    return torch.randn(1, *input_shape)


def classifier_of(model: nn.Module) -> nn.Module:
    """The output layer (the last ``nn.Linear``); pruning its outputs would change the model's output shape."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        if not convs:
            raise GraphTraceError("model has no Linear or Conv layer to prune")
        return convs[-1]
    return linears[-1]


def ignored_modules(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The classifier plus the modules named in ``prune.ignored_layers`` (ConfigError for an unknown name)."""
    modules = dict(model.named_modules())
    ignored = [classifier_of(model)]
    for name in names:
        if name not in modules:
            some = ", ".join(n for n in list(modules)[1:12] if n)
            raise ConfigError(f'Invalid "prune.ignored_layers": no layer named {name!r} in the model (e.g. {some})')
        ignored.append(modules[name])
    return ignored


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """(MACs, params) for one sample, from torch-pruning's counter."""
    macs, params = tp.utils.count_ops_and_params(model, example_input(input_shape))
    return int(macs), int(params)


def build_pruner(model: nn.Module, input_shape: Sequence[int], importance: tp.importance.Importance, *,
                 ratio: float, scope: str, iterative_steps: int, round_to: int | None, max_layer_ratio: float,
                 ignored: list[nn.Module], scheduler: Callable[[float, int], list[float]] | None = None,
                 ratio_dict: dict[nn.Module, float] | None = None) -> tp.pruner.BasePruner:
    """One typed call for torch-pruning's BasePruner; tracing failures become GraphTraceError naming the layer.

    ``ratio_dict`` (group root -> ratio, from latency allocation) overrides ``ratio`` for those groups.
    """
    entered: list[str] = []  # the layers whose forward started during tracing, to name the one that failed
    hooks = [m.register_forward_pre_hook(lambda *_, n=name: entered.append(n)) for name, m in model.named_modules()]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pruner = tp.pruner.BasePruner(
                model, example_input(input_shape), importance=importance, pruning_ratio=ratio,
                global_pruning=scope == "global", iterative_steps=iterative_steps, round_to=round_to,
                max_pruning_ratio=max_layer_ratio, ignored_layers=ignored,
                iterative_pruning_ratio_scheduler=scheduler or linear_scheduler, pruning_ratio_dict=ratio_dict,
            )
    except Exception as exc:  # torch-pruning raises assorted errors from inside model.forward during tracing
        where = f"layer {entered[-1]!r}" if entered and entered[-1] else "the model's own forward"
        raise GraphTraceError(f"torch-pruning cannot trace the model (failed in {where}): "
                              f"{type(exc).__name__}: {exc}") from None
    finally:
        for hook in hooks:
            hook.remove()
    for w in caught:  # e.g. unwrapped parameters or unknown ops: the user must know, they change what is removed
        log.warning("torch-pruning: %s", w.message)
    if scope == "uniform" and not ratio_dict:
        _check_keeps_channels(pruner, ratio, round_to)
    return pruner


def _check_keeps_channels(pruner: tp.pruner.BasePruner, ratio: float, round_to: int | None) -> None:
    """GraphTraceError naming the layer whose channels ``ratio`` (after rounding) would all remove.

    torch-pruning silently skips such a group, so without this check the layer would stay dense unannounced.
    """
    dg = pruner.DG
    for group in dg.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        module = group[0].dep.target.module
        channels = dg.get_out_channels(module)
        if not channels:
            continue
        keep = int(channels * (1 - ratio))
        if round_to:
            keep -= keep % round_to
        if keep <= 0:
            name = dg._module2name.get(module, type(module).__name__)
            fix = f"prune.round_to {round_to} exceeds the {int(channels * (1 - ratio))} channels left" if round_to \
                else f"prune.ratio {ratio} leaves none of its {channels} channels"
            raise GraphTraceError(f"pruning would remove every channel of layer {name!r}: {fix}")


def check_layers_not_empty(model: nn.Module) -> None:
    """GraphTraceError naming the first layer left with no channels."""
    for name, m in model.named_modules():
        sizes = []
        if isinstance(m, nn.modules.conv._ConvNd):
            sizes = [m.in_channels, m.out_channels]
        elif isinstance(m, nn.Linear):
            sizes = [m.in_features, m.out_features]
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            sizes = [m.num_features]
        if any(s == 0 for s in sizes):
            raise GraphTraceError(f"pruning would remove every channel of layer {name!r}: lower prune.ratio, "
                                  "prune.max_layer_ratio or prune.round_to")


def prune_step(pruner: tp.pruner.BasePruner, model: nn.Module) -> None:
    """One ``pruner.step()``, with errors that name the layer instead of a torch-pruning traceback."""
    try:
        pruner.step()
    except (RuntimeError, IndexError, ValueError) as exc:
        check_layers_not_empty(model)
        raise GraphTraceError(f"torch-pruning failed while removing channels: {type(exc).__name__}: {exc}") from None
    check_layers_not_empty(model)


def channel_table(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per prunable layer: type and channel counts (in, out). Used for the before/after table."""
    table = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            table[name] = {"type": type(m).__name__, "in": m.in_channels, "out": m.out_channels}
        elif isinstance(m, nn.Linear):
            table[name] = {"type": "Linear", "in": m.in_features, "out": m.out_features}
    return table


def structural_sparsity(dense: nn.Module, pruned: nn.Module) -> float:
    """Fraction of the dense model's parameters that channel removal took away."""
    n_dense = sum(p.numel() for p in dense.parameters())
    return 1.0 - sum(p.numel() for p in pruned.parameters()) / n_dense


# ----------------------------------------------------------------------------------------------------------------
# Pickle-free model files


def save_model(path: str | Path, model: nn.Module, *, arch: str, kwargs: dict[str, Any], input_shape: Sequence[int],
               num_classes: int, history: list | None = None, removed_blocks: Sequence[str] = (),
               meta: dict[str, Any] | None = None) -> None:
    """Write a self-describing model file: architecture + removed blocks + pruning history + weights, no pickled code.

    Args:
        history: torch-pruning's ``pruner.pruning_history()`` (empty for a dense model).
        removed_blocks: residual blocks replaced by their shortcut (pruning.depth), in removal order.
        meta: small provenance facts (params hash, stage, ...), plain types only.
    """
    record = {
        "format": FORMAT_VERSION,
        "arch": arch,
        "kwargs": dict(kwargs),
        "input_shape": [int(s) for s in input_shape],
        "num_classes": int(num_classes),
        "removed_blocks": [str(n) for n in removed_blocks],
        "history": [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in (history or [])],
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, path)


def load_record(path: str | Path) -> dict[str, Any]:
    """Read a model file with ``weights_only=True`` (no code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found: run the stage that writes it first")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; all mean "not our file"
        raise ModelError(f"{path} is not a model file of this pipeline: {type(exc).__name__}: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT_VERSION:
        raise ModelError(f"{path} is not a model file of this pipeline (format {FORMAT_VERSION})")
    return record


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a (possibly pruned) model from its file. Returns (model in eval mode, record).

    The dense architecture is built from the zoo (or user code), the removed blocks are replaced by their shortcuts,
    torch-pruning's history is replayed (``DG.load_pruning_history``), then the weights are loaded strictly.
    """
    from pruning.depth import remove_blocks

    record = load_record(path)
    model = build_model(record["arch"], record["kwargs"], tuple(record["input_shape"]), record["num_classes"])
    if record.get("removed_blocks"):  # depth first, then channels: the order in which they were pruned
        remove_blocks(model, record["removed_blocks"])
    if record["history"]:
        dg = tp.DependencyGraph().build_dependency(model, example_input(record["input_shape"]))
        dg.load_pruning_history([(n, out, idxs) for n, out, idxs in record["history"]])
    try:
        model.load_state_dict(record["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit the rebuilt architecture: {exc}") from None
    return model.eval(), record


def clone(model: nn.Module) -> nn.Module:
    """A deep copy (used to try pruning ratios without touching the model)."""
    return copy.deepcopy(model)
