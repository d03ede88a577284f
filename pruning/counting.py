"""Counting: MACs and parameters (torch-pruning's counter), the per-layer channel table, structural sparsity."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

# What tracing, MACs counting and export are given: a per-sample shape (a random batch of one is made from it), or an
# example input itself — a tensor, a tuple of tensors (model(*x)) or a dict of tensors (model(**x)), batch of one.
Spec = Any


def is_example(spec: Spec) -> bool:
    """True when ``spec`` is already an input (tensors), False when it is a shape."""
    if isinstance(spec, torch.Tensor | dict):
        return True
    return isinstance(spec, tuple | list) and bool(spec) and all(isinstance(t, torch.Tensor) for t in spec)


def example_input(spec: Spec) -> Any:
    """A batch-of-one input for graph tracing and MACs counting: the example itself, or a random one of the shape."""
    if is_example(spec):
        return tuple(spec) if isinstance(spec, list) else spec
    return torch.randn(1, *spec)


def count_macs(model: nn.Module, spec: Spec) -> tuple[int, int]:
    """(MACs, params) for one sample, from torch-pruning's counter (``spec``: a shape or an example input). Its
    module hooks count layers (a transformer's linear layers; not the attention's own matrix products). Given keyword
    inputs, the counter prints that it found no positional input and assumes a batch of one, which this is: that
    line is kept off stdout."""
    with contextlib.redirect_stdout(io.StringIO()) if isinstance(spec, dict) else contextlib.nullcontext():
        macs, params = tp.utils.count_ops_and_params(model, example_input(spec))
    return int(macs), int(params)


def channel_table(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per prunable layer: type and channel counts (in, out). Used for the before/after table."""
    table = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            table[name] = {"type": type(m).__name__, "in": m.in_channels, "out": m.out_channels}
        elif isinstance(m, nn.Linear):
            table[name] = {"type": "Linear", "in": m.in_features, "out": m.out_features}
    return table


def layer_changes(dense: nn.Module, pruned: nn.Module) -> list[dict[str, Any]]:
    """Per layer of either model: channels before and after (0 after for a layer of a removed block, None before for
    a layer that only the pruned model has, e.g. a shortcut moved by depth pruning)."""
    before, after = channel_table(dense), channel_table(pruned)
    rows = [{"layer": name, "type": row["type"], "in_before": row["in"], "out_before": row["out"],
             "in_after": after.get(name, {}).get("in", 0), "out_after": after.get(name, {}).get("out", 0)}
            for name, row in before.items()]
    rows += [{"layer": name, "type": row["type"], "in_before": None, "out_before": None, "in_after": row["in"],
              "out_after": row["out"]} for name, row in after.items() if name not in before]
    return rows


def structural_sparsity(dense: nn.Module, pruned: nn.Module) -> float:
    """Fraction of the dense model's parameters that channel or block removal took away."""
    n_dense = sum(p.numel() for p in dense.parameters())
    return 1.0 - sum(p.numel() for p in pruned.parameters()) / n_dense
