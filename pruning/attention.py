"""Multi-head attention in a user's model: its heads found, planned, handed to torch-pruning, and the model's own
description of them kept true afterwards.

Why this module: torch-pruning removes whole heads (``num_heads`` / ``prune_num_heads``) but leaves the model's
attributes and config (number of heads, all-head size, key/value groups) to the user — a head-pruned Hugging Face
model then fails on its next forward or on reload (torch-pruning #101, #495) — and its own count of heads removed per
step rounds up per key/value group and is taken of the heads left, not of the dense model's. Here heads are planned per
layer to the nearest valid count (whole heads; with grouped-query attention, the same number of query heads out of
every key/value group, key/value heads kept), each step's count is handed to torch-pruning exactly, and :func:`sync`
rewrites the attributes from the layers' shapes after every pruning step and every replay of a model file.

An attention layer is found by the layout the families share, not by class (no model class is imported): a module with
query/key/value ``nn.Linear`` children (:data:`LAYOUTS`: Llama/Qwen/Mistral ``q_proj``, BERT/ViT ``query``, DistilBERT
``q_lin``, or timm's fused ``qkv``) and a head size (:data:`HEAD_DIM`) or head count (:data:`HEADS`) attribute.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruning import hf

# query, key, value projections by the names the families give them; one name: a fused qkv projection (q | k | v)
LAYOUTS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q", "k", "v"),
                                        ("q_lin", "k_lin", "v_lin"), ("qkv",), ("qkv_proj",))
HEAD_DIM = ("head_dim", "attention_head_size", "head_size")  # a head's width
HEADS = ("num_heads", "num_attention_heads", "n_heads")  # query heads
KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")  # key/value heads (grouped-query attention)
ALL_HEAD_SIZE = ("all_head_size",)  # heads x head size
KV_GROUPS = ("num_key_value_groups",)  # query heads per key/value head


@dataclass(frozen=True)
class Attention:
    """One attention layer: its projections and its head size (which head pruning never changes)."""

    name: str
    module: nn.Module
    projections: tuple[nn.Linear, ...]  # (q, k, v), or (qkv,) fused
    head_dim: int

    @property
    def heads(self) -> int:
        q = self.projections[0]
        return q.out_features // (self.head_dim * (3 if len(self.projections) == 1 else 1))

    @property
    def kv_heads(self) -> int:
        return self.heads if len(self.projections) == 1 else self.projections[1].out_features // self.head_dim


def _attr(module: nn.Module, names: Sequence[str]) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def find(model: nn.Module) -> list[Attention]:
    """The attention layers of ``model`` whose heads can be pruned, in module order."""
    found = []
    for name, module in model.named_modules():
        for layout in LAYOUTS:
            projections = tuple(getattr(module, p, None) for p in layout)
            if not all(isinstance(p, nn.Linear) for p in projections):
                continue
            head_dim = _attr(module, HEAD_DIM)
            heads = _attr(module, HEADS)
            width = projections[0].out_features // (3 if len(layout) == 1 else 1)
            if head_dim is None and heads:
                head_dim = width // heads
            if head_dim and width % head_dim == 0 and all(p.out_features % head_dim == 0 for p in projections):
                found.append(Attention(name, module, projections, head_dim))
            break
    return found


def num_heads(attentions: Sequence[Attention]) -> dict[nn.Module, int]:
    """torch-pruning's ``num_heads``: each projection's current head count (key/value: their own, fewer with GQA)."""
    out: dict[nn.Module, int] = {}
    for a in attentions:
        if len(a.projections) == 1:
            out[a.projections[0]] = a.heads
        else:
            q, k, v = a.projections
            out.update({q: a.heads, k: a.kv_heads, v: a.kv_heads})
    return out


@dataclass
class HeadPlan:
    """Heads removed per attention layer, in total and at each step of a schedule."""

    rows: list[dict[str, Any]]  # per layer: layer, heads, kv_heads, keep, note
    removed: dict[nn.Module, list[int]]  # per attention module: heads removed at step 0..N (step 0: none)

    def notes(self) -> list[str]:
        return [f"{r['layer']} ({r['heads']} -> {r['keep']} heads): {r['note']}" for r in self.rows if r["note"]]


def plan(attentions: Sequence[Attention], ratio: float, schedule: Sequence[float]) -> HeadPlan:
    """Whole heads to remove per layer for ``ratio``: the nearest count to ``ratio`` x heads that leaves at least one;
    with grouped-query attention the nearest count of query heads per key/value group, the same in every group (a
    request that cannot be met exactly is rounded and noted). ``schedule``: torch-pruning's cumulative ratios per step
    (``schedule[-1]`` = ``ratio``); step t removes its share of the layer's total, rounded the same way."""
    rows, removed = [], {}
    for a in attentions:
        h, kv = a.heads, a.kv_heads
        per_group = h // kv  # query heads per key/value head (1 without GQA: every head its own group)
        unit = kv if kv < h else 1  # heads go in units of one per key/value group
        units = h // unit
        total = min(units - 1, max(0, round(ratio * units)))
        note = ""
        if kv < h and abs(total / units - ratio) > 1e-9:
            note = (f"grouped-query attention: {h} query heads in {kv} key/value groups of {per_group}: {total} of "
                    f"each group removed ({total / units:.3g} of the heads; {ratio:.3g} asked)")
        elif total == 0 and ratio > 0:
            note = f"kept every head: {ratio:.3g} of {units} heads rounds to none"
        end = schedule[-1] or 1.0
        cumulative = [min(total, round(total * s / end)) for s in schedule]
        removed[a.module] = [0] + [(cumulative[t] - cumulative[t - 1]) * unit for t in range(1, len(schedule))]
        rows.append({"layer": a.name, "heads": h, "kv_heads": kv, "keep": h - total * unit, "note": note})
    return HeadPlan(rows, removed)


def check_applied(model: nn.Module, heads_plan: HeadPlan) -> list[str]:
    """Compare the heads ``model`` has with the plan's; a layer torch-pruning left otherwise (a layout it could not
    map) gets its row corrected and a note, returned for the log: the report says what happened, not what was
    asked."""
    actual = {a.name: a.heads for a in find(model)}
    missed = []
    for row in heads_plan.rows:
        now = actual.get(row["layer"])
        if now is not None and now != row["keep"]:
            missed.append(f"{row['layer']}: {now} heads left, {row['keep']} planned (torch-pruning did not remove "
                          "the planned heads of this layout)")
            row["keep"], row["note"] = now, missed[-1].split(": ", 1)[1]
    return missed


def hidden_for_heads(model: nn.Module, heads_plan: HeadPlan) -> int | None:
    """The hidden size to keep with ``heads_plan`` when the model's config derives its head size from the hidden
    size (hidden size = heads x head size, no ``head_dim`` stated or read: BERT): kept heads x head size, so the
    pruned config still describes the model and ``save_pretrained`` reloads it. None when the config states the head
    size or its class reads one (ViT), or there is none, or the layers keep different counts: the hidden size then
    goes by the ratio like any group."""
    config, attentions = getattr(model, "config", None), find(model)
    keeps = {r["keep"] for r in heads_plan.rows}
    if (config is None or getattr(config, "head_dim", None) is not None or len(keeps) != 1
            or len({a.head_dim for a in attentions}) != 1 or hf.reads_head_dim(model) is not False):
        return None
    head_dim = attentions[0].head_dim
    return keeps.pop() * head_dim if getattr(config, "hidden_size", None) == attentions[0].heads * head_dim else None


def step_ratios(attentions: Sequence[Attention], heads_plan: HeadPlan) -> dict[nn.Module, list[float]]:
    """torch-pruning's ``head_pruning_ratio_dict`` entries (per projection, per step) that make it remove exactly the
    planned heads: it removes ceil(r x heads left) heads (with GQA, then ceil of that / key/value heads per group), so
    r = (n - 1/2) / heads left gives n."""
    out: dict[nn.Module, list[float]] = {}
    for a in attentions:
        left, ratios = a.heads, []
        for n in heads_plan.removed[a.module]:
            ratios.append((n - 0.5) / left if n else 0.0)
            left -= n
        for p in a.projections:
            out[p] = ratios
    return out


def sync(model: nn.Module) -> None:
    """Make the attributes that describe the attention layers' shapes (heads, key/value heads, all-head size, query
    heads per key/value head) and the MLP width agree with the layers' weights again, and the model's Hugging Face
    config where every layer agrees: where it states the head size (``head_dim``, as Mistral's) or its class reads
    one when stated (ViT's), ``save_pretrained`` then writes a config that rebuilds the pruned model."""
    attentions = find(model)
    for a in attentions:
        _set(a.module, HEADS, a.heads)
        _set(a.module, KV_HEADS, a.kv_heads)
        _set(a.module, ALL_HEAD_SIZE, a.heads * a.head_dim)
        _set(a.module, KV_GROUPS, a.heads // a.kv_heads)
    config = getattr(model, "config", None)
    if config is None or not attentions:
        return
    widths = {a.projections[0].in_features for a in attentions}  # the hidden size (channel.Config.hidden prunes it)
    if len(widths) == 1 and isinstance(getattr(config, "hidden_size", None), int):
        config.hidden_size = widths.pop()
    shapes = {(a.heads, a.kv_heads, a.head_dim) for a in attentions}
    if len(shapes) == 1 and getattr(config, "head_dim", None) is not None:
        heads, kv, head_dim = shapes.pop()
        config.num_attention_heads, config.head_dim = heads, head_dim
        if getattr(config, "num_key_value_heads", None) is not None:
            config.num_key_value_heads = kv
    mlp = set()
    for m in model.modules():
        width = mlp_width(m)
        if width is not None:
            _set(m, ("intermediate_size",), width)
            mlp.add(width)
    if len(mlp) == 1 and isinstance(getattr(config, "intermediate_size", None), int):
        config.intermediate_size = mlp.pop()
    if len(shapes) == 1 and isinstance(getattr(config, "num_attention_heads", None), int):
        _state_head_size(model, config, *shapes.pop())  # last: the rest of the config describes the model by now


MLP_IN = ("up_proj", "fc1", "dense_h_to_4h", "lin1")  # an MLP's first (widening) projection, by the families' names


_UNSET = object()


def _state_head_size(model: nn.Module, config: Any, heads: int, kv: int, head_dim: int) -> None:
    """Heads removed from a model whose config derives the head size (hidden size / heads, as BERT's and ViT's):
    the new count and the head size stated (``head_dim``), kept where the class reads them (ViT does) — the config
    then rebuilds the model (:func:`pruning.hf.rebuilds`) — else the config left as it was (BERT's cannot say it)."""
    if config.num_attention_heads == heads:
        return
    before = config.num_attention_heads, getattr(config, "head_dim", _UNSET)
    config.num_attention_heads, config.head_dim = heads, head_dim
    if not hf.rebuilds(model):
        config.num_attention_heads = before[0]
        if before[1] is _UNSET:
            del config.head_dim
        else:
            config.head_dim = before[1]


def mlp_width(module: nn.Module) -> int | None:
    """The hidden width of an MLP block (its first projection's outputs); None for any other module."""
    for name in MLP_IN:
        layer = getattr(module, name, None)
        if isinstance(layer, nn.Linear):
            return layer.out_features
    dense = getattr(module, "dense", None)  # BERT / ViT: an `intermediate` module holding the widening `dense`
    if type(module).__name__.endswith("Intermediate") and isinstance(dense, nn.Linear):
        return dense.out_features
    return None


def _set(module: nn.Module, names: Sequence[str], value: int) -> None:
    for name in names:
        if isinstance(getattr(module, name, None), int):
            setattr(module, name, value)


HEAD_NORMS = ("q_norm", "k_norm")  # per-head query / key norms (Qwen3, OLMo2-style): weights of one head's width


class _ConstantWeights(nn.Module):
    """A per-head norm called with its weights as constants (``torch.func.functional_call`` with detached tensors) and
    not registered as a submodule: torch-pruning's trace sees neither its module nor a parameter. Its weight has one
    head's width and is shared by every head, so it couples nothing; seen as a parameter, it tied the query, key and
    value channels of every head together and no head could go."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "norm", norm)  # outside the module tree on purpose

    def forward(self, x: Any) -> Any:
        constants = {k: v.detach() for k, v in self.norm.named_parameters()}
        return torch.func.functional_call(self.norm, constants, (x,))


@contextlib.contextmanager
def _constant_head_norms(model: nn.Module) -> Iterator[None]:
    swapped = []
    for a in find(model):
        for name in HEAD_NORMS:
            norm = getattr(a.module, name, None)
            weight = getattr(norm, "weight", None)
            if isinstance(norm, nn.Module) and isinstance(weight, torch.Tensor) and weight.numel() == a.head_dim:
                setattr(a.module, name, _ConstantWeights(norm))
                swapped.append((a.module, name, norm))
    try:
        yield
    finally:
        for module, name, norm in swapped:
            setattr(module, name, norm)


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[None]:
    """A Hugging Face model as torch-pruning can trace it: eager attention (SDPA's grouped-query path hides the
    key/value repeat that couples a query head to its key/value head), no key/value cache in the outputs, per-head
    query/key norms with constant weights (:class:`_ConstantWeights`); the model's own settings are back afterwards."""
    with _constant_head_norms(model), exportable(model):
        yield


@contextlib.contextmanager
def exportable(model: nn.Module) -> Iterator[None]:
    """Eager attention and no key/value cache (the logits the one output), the model's own settings back afterwards:
    how a Hugging Face model is exported and traced."""
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    use_cache = getattr(config, "use_cache", None)
    switch = implementation not in (None, "eager") and callable(getattr(model, "set_attn_implementation", None))
    if switch:
        model.set_attn_implementation("eager")
    if use_cache:
        config.use_cache = False
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(implementation)
        if use_cache:
            config.use_cache = use_cache
