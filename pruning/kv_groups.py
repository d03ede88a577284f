"""Whole key/value groups out of grouped-query attention: a key/value head goes with the query heads that share it.

torch-pruning removes query heads *within* every key/value group (the same number from each) and keeps the key/value
heads; Minitron also prunes whole groups, which shrinks the key/value cache as well. torch-pruning has no such
mode, so the group's rows are cut here, directly: the key and value projections' outputs of that head, the query
projection's outputs of its query heads and the output projection's inputs of the same, with torch-pruning's own
layer functions (``prune_linear_out_channels`` / ``prune_linear_in_channels``), then :func:`pruning.attention.sync`
sets the attributes and config. Groups are ranked by magnitude: the L2 norm of the weights a group's removal takes
(its rows and the output projection's columns). A model file records the groups removed (a ``kv_groups`` edit) and
replays them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from pruning import attention, dependency
from pruning.errors import ModelError

log = logging.getLogger(__name__)


def grouped(model: nn.Module) -> list[attention.Attention]:
    """The model's attention layers with grouped-query attention (fewer key/value heads than query heads)."""
    return [a for a in attention.find(model) if len(a.projections) == 3 and a.kv_heads < a.heads]


def _rows(a: attention.Attention, group: int) -> tuple[list[int], list[int]]:
    """(the query heads' channels, the key/value head's channels) of key/value group ``group``."""
    d, per = a.head_dim, a.heads // a.kv_heads
    return list(range(group * per * d, (group + 1) * per * d)), list(range(group * d, (group + 1) * d))


def _outputs(model: nn.Module, attentions: Sequence[attention.Attention], example: Any) -> dict[str, nn.Module]:
    dg = dependency.graph(model, example)
    found: dict[str, nn.Module] = {}
    for a in attentions:
        q_rows = a.projections[0].out_features
        outs = [m for m in dependency.output_projections(dg, [a]) if m.in_features == q_rows]
        if len(outs) != 1:
            raise ModelError(f"{a.name}: no single output projection found to remove key/value groups from")
        found[a.name] = outs[0]
    return found


def plan(model: nn.Module, ratio: float, example: Any) -> tuple[dict[str, list[int]], list[str]]:
    """Per grouped-query attention layer, the ``round(ratio x key/value heads)`` groups of least magnitude (at least
    one group stays); and notes where the ratio was rounded."""
    attentions = grouped(model)
    outputs = _outputs(model, attentions, example)
    removed, notes = {}, []
    for a in attentions:
        q, k, v = a.projections
        n = min(a.kv_heads - 1, max(0, round(ratio * a.kv_heads)))
        if abs(n / a.kv_heads - ratio) > 1e-9:
            notes.append(f"{a.name} ({a.kv_heads} key/value groups of {a.heads // a.kv_heads} query heads): {n} "
                         f"removed ({n / a.kv_heads:.3g} of the groups; {ratio:.3g} asked)")
        with torch.no_grad():
            scores = []
            for g in range(a.kv_heads):
                q_rows, kv_rows = _rows(a, g)
                scores.append(float(q.weight[q_rows].pow(2).sum() + k.weight[kv_rows].pow(2).sum()
                                    + v.weight[kv_rows].pow(2).sum() + outputs[a.name].weight[:, q_rows].pow(2).sum()))
        removed[a.name] = sorted(sorted(range(a.kv_heads), key=lambda g: (scores[g], g))[:n])
    return removed, notes


def remove(model: nn.Module, removed: dict[str, list[int]], example: Any) -> nn.Module:
    """Cut the key/value groups ``removed`` names (attention layer -> group indices) out of ``model``, in place;
    ModelError for a layer or a group the model does not have (a model file is untrusted)."""
    attentions = {a.name: a for a in grouped(model)}
    if not isinstance(removed, dict):
        raise ModelError(f"key/value groups to remove must be a mapping, not {type(removed).__name__}")
    for name, groups in removed.items():
        a = attentions.get(name)
        if a is None:
            raise ModelError(f"no grouped-query attention layer {name!r} (layers: {', '.join(attentions) or 'none'})")
        if (not isinstance(groups, list) or not all(isinstance(g, int) and 0 <= g < a.kv_heads for g in groups)
                or len(set(groups)) != len(groups) or len(groups) >= a.kv_heads):
            raise ModelError(f"{name}: cannot remove key/value groups {groups!r} of {a.kv_heads}")
    outputs = _outputs(model, [attentions[n] for n in removed if removed[n]], example)
    for name, groups in removed.items():
        if not groups:
            continue
        a = attentions[name]
        q, k, v = a.projections
        q_rows = [r for g in groups for r in _rows(a, g)[0]]
        kv_rows = [r for g in groups for r in _rows(a, g)[1]]
        tp.prune_linear_out_channels(q, q_rows)
        tp.prune_linear_out_channels(k, kv_rows)
        tp.prune_linear_out_channels(v, kv_rows)
        tp.prune_linear_in_channels(outputs[name], q_rows)
    attention.sync(model)
    return model


def edit(removed: dict[str, list[int]]) -> dict[str, Any]:
    return {"kind": "kv_groups", "removed": {str(k): [int(g) for g in v] for k, v in removed.items()}}
