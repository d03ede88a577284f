"""torch-pruning's dependency graph behind one typed call: channel/filter removal that keeps coupled layers consistent.

Why a wrapper at all: torch-pruning's ``BasePruner`` takes ~30 arguments and raises bare tracing errors; this module
gives it one typed call, names the layer when something goes wrong (and the argument to change, in ``field``), and
replays a recorded pruning history on a freshly built model (``DG.load_pruning_history``) for the model files.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch_pruning as tp
from torch import nn
from torch_pruning.pruner.algorithms.scheduler import linear_scheduler

from pruning import attention
from pruning.counting import example_input
from pruning.data import logits_of, scored_output
from pruning.errors import GraphTraceError

log = logging.getLogger(__name__)

History = list[tuple[str, bool, list[int]]]  # torch-pruning's pruning_history(): (layer name, out-channels?, indices)

# The layer types that lead a group of coupled channels: torch-pruning's BasePruner default, named once so that the
# pruner and every walk over its groups (prunable_groups) agree on what a group is.
ROOT_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM)


@dataclass(frozen=True)
class PrunableGroup:
    """Coupled channels torch-pruning removes together, led by the output channels of its root layer."""

    group: Any  # torch_pruning.dependency.Group: (dependency, indices) items over every coupled layer
    root: nn.Module
    name: str  # the root layer's name in the model
    channels: int  # the root's output channels


def prunable_groups(dg: tp.DependencyGraph, model: nn.Module, ignored: Sequence[nn.Module]) -> list[PrunableGroup]:
    """The groups of ``dg`` (``model``'s dependency graph) whose channels can be removed, in torch-pruning's order:
    the one walk over its groups (the uniform plan, latency allocation, the loss-change oracle's correlation and
    complexity-aware training's unit gates read the same groups). A group whose removal would cut an ``ignored``
    layer's outputs is left out, as is one whose root has no output channels to count."""
    names = {m: n for n, m in model.named_modules()}
    out = []
    for group in dg.get_all_groups(ignored_layers=list(ignored), root_module_types=ROOT_TYPES):
        root = group[0].dep.target.module
        channels = dg.get_out_channels(root)
        if channels:
            out.append(PrunableGroup(group, root, names.get(root, type(root).__name__), channels))
    return out


def classifier_of(model: nn.Module) -> nn.Module:
    """The output layer (the last ``nn.Linear``); pruning its outputs would change the model's output shape."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        if not convs:
            raise GraphTraceError("model has no Linear or Conv layer to prune")
        return convs[-1]
    return linears[-1]


def modules_named(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The modules named in ``names``: exact module names, or glob patterns (``*.se.*``, ``features.?.conv``: any of
    ``*?[`` makes a pattern, matched with fnmatch against every module name). GraphTraceError (``field=
    "ignored_layers"``) naming an unknown name or a pattern that matches nothing."""
    modules = dict(model.named_modules())
    found: list[nn.Module] = []
    for name in names:
        if any(c in name for c in "*?["):
            matched = [m for n, m in modules.items() if n and fnmatch.fnmatchcase(n, name)]
            if not matched:
                some = ", ".join(n for n in list(modules)[1:12] if n)
                raise GraphTraceError(f"pattern {name!r} matches no layer of the model (e.g. {some})",
                                      field="ignored_layers")
            found += matched
        elif name not in modules:
            some = ", ".join(n for n in list(modules)[1:12] if n)
            raise GraphTraceError(f"no layer named {name!r} in the model (e.g. {some})", field="ignored_layers")
        else:
            found.append(modules[name])
    return list(dict.fromkeys(found))  # each once, in order


def ignored_modules(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The classifier plus the modules named in ``names``: what channel pruning must leave alone."""
    return [classifier_of(model), *modules_named(model, names)]


@dataclass
class Plan:
    """Channels kept per pruning group under a uniform ratio with ``round_to``: what :func:`build_pruner` asked of
    torch-pruning, and why a group kept more (or less) than the ratio says."""

    ratio: float  # asked
    round_to: int
    rows: list[dict[str, Any]]  # per group: layer, channels, keep, groups (channel groups), note
    ratios: dict[nn.Module, float] = field(default_factory=dict)  # torch-pruning's pruning_ratio_dict
    heads: attention.HeadPlan | None = None  # whole attention heads removed per layer (attention.plan)

    @property
    def achieved(self) -> float:
        """Share of the prunable groups' channels removed (what ``ratio`` asked for, after rounding)."""
        total = sum(r["channels"] for r in self.rows)
        return 1 - sum(r["keep"] for r in self.rows) / total if total else 0.0

    def notes(self) -> list[str]:
        heads = self.heads.notes() if self.heads else []
        return [f"{r['layer']} ({r['channels']} -> {r['keep']}): {r['note']}" for r in self.rows if r["note"]] + heads


def build_pruner(model: nn.Module, input_shape: Sequence[int], importance: tp.importance.Importance, *,
                 ratio: float, scope: str, iterative_steps: int, round_to: int | None, max_layer_ratio: float,
                 ignored: list[nn.Module], scheduler: Callable[[float, int], list[float]] | None = None,
                 ratio_dict: dict[nn.Module, float] | None = None,
                 hidden: bool | str = False, head_ratio: float | None = None) -> tuple[tp.pruner.BasePruner, Plan | None]:
    """One typed call for torch-pruning's BasePruner; tracing failures become GraphTraceError naming the layer.

    ``ratio_dict`` (group root -> ratio, from latency allocation) overrides ``ratio`` for those groups. With a uniform
    ``ratio`` (``round_to`` None counts as 1), the channel counts are planned here (:func:`plan_uniform`: the nearest multiple of
    ``round_to`` that keeps the overall ratio closest to the asked one, grouped convolutions respected, groups too
    narrow to round kept dense) and handed to torch-pruning as exact per-group ratios; the plan is returned with the
    pruner (None otherwise). A ratio that leaves a layer nothing is an error naming the layer. Attention heads go by
    ``head_ratio`` where given (a transformer's latency allocation prices heads and MLP channels apart), else by
    ``ratio``. ``hidden``: prune a transformer's hidden size too (True), keep it (False), or "auto": keep it unless
    the uniform plan removes heads of a model whose class derives its head size from it
    (:func:`attention.hidden_for_heads`), where it follows the heads.
    """
    head_ratio = ratio if head_ratio is None else head_ratio
    if scope != "uniform" or ratio_dict or (ratio <= 0 and head_ratio <= 0):
        return _pruner(model, input_shape, importance, ratio, scope, iterative_steps, round_to, max_layer_ratio,
                       ignored, scheduler, ratio_dict, hidden is True), None
    attentions = attention.find(model)
    # whole heads, as many per layer as attention.plan says at each step
    heads = attention.plan(attentions, head_ratio, (scheduler or linear_scheduler)(head_ratio, iterative_steps)) \
        if attentions else None
    keep = attention.hidden_for_heads(model, heads) if heads and hidden is not False else None
    if hidden == "auto":
        hidden = keep is not None and keep < model.config.hidden_size  # set where hidden_for_heads gives a size
    probe = _pruner(model, input_shape, importance, 0.0, scope, 1, None, 1.0, ignored, None, None, bool(hidden))
    plan = plan_uniform(model, probe, ratio, round_to or 1, max_layer_ratio, hidden_keep=keep if hidden else None)
    # every count is final: torch-pruning's own rounding (always down, and blind to channel groups) stays off
    pruner = _pruner(model, input_shape, importance, 0.0, scope, iterative_steps, None, 1.0, ignored, scheduler,
                     plan.ratios, bool(hidden))
    if heads:
        plan.heads = heads
        pruner.head_pruning_ratio_dict.update(attention.step_ratios(attentions, heads))
    return pruner, plan


def graph(model: nn.Module, example: Any) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model`` traced on ``example`` (its logits, a Hugging Face model as
    :func:`attention.traceable` makes it). A transformer's norms, class token and position embeddings are parameters
    outside a layer, which torch-pruning warns about: they are the hidden size's, which stays, so that one is quiet."""
    with warnings.catch_warnings(), attention.traceable(model):
        if attention.find(model):
            warnings.filterwarnings("ignore", "Unwrapped parameters")
        return tp.DependencyGraph().build_dependency(model, example,
                                                     output_transform=lambda out: logits_of(out, scored_output(model)))


def output_projections(dg: tp.DependencyGraph, attentions: Sequence[attention.Attention]) -> list[nn.Module]:
    """Each attention layer's output projection (the layer whose inputs are its heads): kept out of channel pruning,
    since its outputs are the model's residual stream (the hidden size, kept unless asked)."""
    found = []
    for a in attentions:
        for p in a.projections:  # the query's group holds it (grouped-query attention), or the value's
            group = dg.get_pruning_group(p, dg.get_pruner_of_module(p).prune_out_channels, list(range(p.out_features)))
            found += [dep.target.module for dep, _ in group if dg.is_in_channel_pruning_fn(dep.handler)
                      and isinstance(dep.target.module, tp.ops.TORCH_LINEAR) and dep.target.module not in a.projections]
    return list(dict.fromkeys(found))


def _pruner(model: nn.Module, input_shape: Sequence[int], importance: tp.importance.Importance, ratio: float,
            scope: str, iterative_steps: int, round_to: int | None, max_layer_ratio: float, ignored: list[nn.Module],
            scheduler: Callable[[float, int], list[float]] | None,
            ratio_dict: dict[nn.Module, float] | None, hidden: bool = False) -> tp.pruner.BasePruner:
    """torch-pruning's BasePruner; with attention layers, set up to remove whole heads (none until
    :func:`build_pruner` hands it attention.plan's counts) and to keep the hidden size (unless ``hidden``)."""
    example = example_input(input_shape)
    attentions = attention.find(model)
    heads: dict[str, Any] = {}
    if attentions:
        if scope == "global":
            raise GraphTraceError("scope global ranks attention heads across layers, which leaves layers with "
                                  "different head counts than their config; use scope uniform", field="scope")
        # a positive share for each attention's scope: torch-pruning reaches its heads only through it (its head
        # dims stay, prune_head_dims off); the heads removed are attention.plan's
        # (on the query/key/value projections, not the attention module: its output projection's outputs are the
        # hidden size, whose group would fall in that scope)
        ratio_dict = {**(ratio_dict or {}), **{p: 0.5 for a in attentions for p in a.projections}}
        heads = {"num_heads": attention.num_heads(attentions), "prune_num_heads": True, "prune_head_dims": False}
    entered: list[str] = []  # the layers whose forward started during tracing, to name the one that failed
    hooks = [m.register_forward_pre_hook(lambda *_, n=name: entered.append(n)) for name, m in model.named_modules()]
    # the whole forward ran: a failure after it is torch-pruning's graph analysis, not the last layer entered
    hooks.append(model.register_forward_hook(lambda *_: entered.append("")))
    try:
        with warnings.catch_warnings(record=True) as caught, attention.traceable(model):
            warnings.simplefilter("always")
            pruner = tp.pruner.BasePruner(
                model, example, importance=importance, pruning_ratio=ratio,
                global_pruning=scope == "global", iterative_steps=iterative_steps, round_to=round_to,
                max_pruning_ratio=max_layer_ratio, ignored_layers=ignored, root_module_types=list(ROOT_TYPES),
                iterative_pruning_ratio_scheduler=scheduler or linear_scheduler, pruning_ratio_dict=ratio_dict,
                output_transform=lambda out: logits_of(out, scored_output(model)), **heads,
            )
    except Exception as exc:  # torch-pruning raises assorted errors from inside model.forward during tracing
        if entered and entered[-1] == "":
            where = ("its dependency analysis after the forward pass: an operation it cannot map, e.g. a reshape / "
                     "channel shuffle over several units")
        else:
            where = f"layer {entered[-1]!r}" if entered and entered[-1] else "the model's own forward"
        raise GraphTraceError(f"torch-pruning cannot trace the model (failed in {where}): "
                              f"{type(exc).__name__}: {exc}") from None
    finally:
        for hook in hooks:
            hook.remove()
    for w in caught:  # e.g. unwrapped parameters or unknown ops: the user must know, they change what is removed
        if attentions and "Unwrapped parameters" in str(w.message):
            continue  # a transformer's norms, class token and position embeddings: the hidden size, which stays
        log.warning("torch-pruning: %s", w.message)
    # the output projections' outputs are the residual stream: ignored, every group that would cut the hidden size
    # is left out (the pruner's own graph: torch-pruning reads ignored_layers at each step and plan_uniform here)
    if not hidden:
        pruner.ignored_layers.extend(output_projections(pruner.DG, attentions))
    return pruner


def channel_groups(pruner: tp.pruner.BasePruner, model: nn.Module) -> list[PrunableGroup]:
    """The pruner's groups that lose channels, not heads: those whose attention projections' outputs are in them
    lose whole heads (:func:`pruning.attention.plan`) and are left out (the hidden size's group holds the projections
    too, by their inputs: it stays in)."""
    heads = set(pruner.num_heads)
    return [found for found in prunable_groups(pruner.DG, model, pruner.ignored_layers)
            if not any(dep.target.module in heads and pruner.DG.is_out_channel_pruning_fn(dep.handler)
                       for dep, _ in found.group)]


def _channel_groups(pruner: tp.pruner.BasePruner, group: Any) -> int:
    # torch-pruning's own count of the group's channel groups (grouped convolutions, GroupNorm; depthwise excluded):
    # the kept count must be a multiple of it, since every group of a grouped convolution loses the same channels
    return int(pruner._get_channel_groups(group))


def plan_uniform(model: nn.Module, pruner: tp.pruner.BasePruner, ratio: float, round_to: int,
                 max_layer_ratio: float, hidden_keep: int | None = None) -> Plan:
    """Channels kept per group for a uniform ``ratio`` on the ``round_to`` grid.

    Per group of C channels with g channel groups, the allowed counts are multiples of lcm(round_to, g) (multiples of
    g alone when that would leave no choice below C: noted), never below ``max_layer_ratio`` allows, and C itself. A
    group narrower than the grid (a squeeze-excitation bottleneck of 4) stays dense (noted). Between the two allowed
    counts around C * (1 - ratio), groups are rounded up in the order of their remainders while that brings the total
    closer to the asked share (largest-remainder rounding): the achieved ratio is the asked one to within a grid step,
    instead of torch-pruning's always-down rounding (ratio 0.35 took 16 -> 8 and 32 -> 16, 50 %).

    ``hidden_keep``: the groups as wide as the hidden size (its own, a pooler's) keep that.
    GraphTraceError (``field="ratio"``) naming the layer when the ratio alone leaves a group nothing.
    """
    rows, spans = [], []
    heads = set(pruner.num_heads)
    for found in channel_groups(pruner, model):
        root, name, channels = found.root, found.name, found.channels
        if hidden_keep and channels == min(m.in_features for m in heads):  # the hidden size's and a pooler's
            rows.append({"layer": name, "channels": channels, "keep": hidden_keep, "groups": 1, "root": root,
                         "note": "the hidden size follows the heads (its config derives the head size from it)"})
            continue
        target = channels * (1 - ratio)
        g = _channel_groups(pruner, found.group)
        grid, note = math.lcm(round_to, g), ""
        if g > 1 and grid >= channels:
            grid, note = g, f"multiples of its {g} channel groups (round_to {round_to} would leave no choice)"
        floor = max(grid, math.ceil(channels * (1 - max_layer_ratio) / grid) * grid)
        if floor >= channels:
            rows.append({"layer": name, "channels": channels, "keep": channels, "groups": g,
                         "note": f"kept dense: narrower than round_to {round_to}" if channels <= round_to else
                         f"kept dense: no multiple of {grid} below {channels} within max_layer_ratio"})
            continue
        # checked after the kept-dense groups: a 1-channel squeeze-excitation bottleneck, which no ratio can prune,
        # made every ratio an error and a MACs target "out of reach at ratio 0.000"
        if target < 1:
            raise GraphTraceError(f"pruning would remove every channel of layer {name!r}: ratio {ratio} leaves none "
                                  f"of its {channels} channels", field="ratio")
        low = min(max(floor, int(target // grid) * grid), channels)
        high = min(low + grid, channels)
        rows.append({"layer": name, "channels": channels, "keep": low, "groups": g, "note": note, "root": root})
        if high > low:
            spans.append((min(1.0, max(0.0, (target - low) / (high - low))), len(rows) - 1, high))
    if ratio > 0 and rows and not spans and all(r["keep"] == r["channels"] for r in rows):
        widest = max(rows, key=lambda r: r["channels"])
        raise GraphTraceError(f"pruning would remove every channel of layer {widest['layer']!r}: round_to {round_to} "
                              f"exceeds the {int(widest['channels'] * (1 - ratio))} channels left, and no other layer "
                              "can be rounded either", field="round_to")
    wanted = sum(r["channels"] for r in rows) * (1 - ratio)
    kept = sum(r["keep"] for r in rows)
    # a transformer's groups alike (its MLPs: same width, same grid) are rounded alike, so that layers of one width
    # stay of one width and the model's config (one intermediate size) still describes them; a CNN's each on its own
    alike: dict[tuple[int, int, int], list[int]] = {}
    for _, i, high in sorted(spans, key=lambda s: -s[0]):
        alike.setdefault((rows[i]["channels"], rows[i]["keep"], high) if heads else (i, 0, high), []).append(i)
    for (_, _, high), members in alike.items():
        low = rows[members[0]]["keep"]
        up = (high - low) * len(members)
        if abs(kept + up - wanted) < abs(kept - wanted):
            for i in members:
                rows[i]["keep"] = high
            kept += up
    ratios = {}
    for r in rows:
        root = r.pop("root", None)
        if root is not None and r["keep"] < r["channels"]:
            # torch-pruning keeps int(channels * (1 - ratio)) (per channel group): half a channel of slack makes that
            # exactly ``keep``
            ratios[root] = (r["channels"] - r["keep"] - 0.5) / r["channels"]
    return Plan(ratio, round_to, rows, ratios)


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
            raise GraphTraceError(f"pruning would remove every channel of layer {name!r}: lower the ratio, "
                                  "max_layer_ratio or round_to")


# torch-pruning's graph nodes for operations that are not layers, by what a user would call them in their forward
_OPS = {"_ReshapeOp": "a reshape (view / flatten / transpose: e.g. a channel shuffle)", "_ConcatOp": "a concat",
        "_SplitOp": "a split / chunk", "_UnbindOp": "an unbind", "_ExpandOp": "an expand"}


def _failing_group(exc: BaseException, model: nn.Module) -> str | None:
    """Where inside torch-pruning's step ``exc`` came from, in the user's words: the group being handled when it
    failed (its root layer) and the operations its channels pass through. None when the traceback holds no group."""
    groups = []
    tb = exc.__traceback__
    while tb is not None:
        group = tb.tb_frame.f_locals.get("group")
        if isinstance(group, tp.dependency.Group):
            groups.append(group)
        tb = tb.tb_next
    if not groups:
        return None
    group = groups[-1]
    names = {m: n for n, m in model.named_modules()}
    root = names.get(group[0].dep.target.module, type(group[0].dep.target.module).__name__)
    ops = sorted({_OPS[type(node.module).__name__] for dep, _ in group for node in (dep.source, dep.target)
                  if type(node.module).__name__ in _OPS})
    through = f", which pass through {' and '.join(ops)}" if ops else ""
    return f"the channels of layer {root!r}{through}; add {root!r} to ignored_layers to keep them"


def prune_step(pruner: tp.pruner.BasePruner, model: nn.Module) -> None:
    """One ``pruner.step()``, with errors that name the layer instead of a torch-pruning traceback."""
    try:
        pruner.step()
    except (RuntimeError, IndexError, ValueError, ZeroDivisionError) as exc:
        check_layers_not_empty(model)
        where = _failing_group(exc, model)
        raise GraphTraceError(f"torch-pruning cannot remove {where or 'channels'}: {type(exc).__name__}: {exc}"
                              if where else
                              f"torch-pruning failed while removing channels: {type(exc).__name__}: {exc}") from None
    check_layers_not_empty(model)
    attention.sync(model)


def replay(model: nn.Module, input_shape: Sequence[int], history: History) -> nn.Module:
    """Remove the channels of a recorded ``pruner.pruning_history()`` from a freshly built model, in place; returns it."""
    # grouped-query attention: torch-pruning removes query heads and leaves the key/value projections their heads
    # (it empties their part of the group before pruning, which the history does not record); the replay does the same
    gqa = [a for a in attention.find(model) if a.kv_heads < a.heads]
    shared_kv = {p for a in gqa for p in a.projections[1:]}
    queries = {a.projections[0] for a in gqa}
    dg = graph(model, example_input(input_shape))
    modules = dict(model.named_modules())
    for name, out, idxs in history:  # DependencyGraph.load_pruning_history, with the key/value part left out
        module = modules[name]
        pruner = dg.get_pruner_of_module(module)
        group = dg.get_pruning_group(module, pruner.prune_out_channels if out else pruner.prune_in_channels, idxs)
        if any(dep.target.module in queries and dg.is_out_channel_pruning_fn(dep.handler) for dep, _ in group):
            for i, (dep, _) in enumerate(list(group)):
                if dep.target.module in shared_kv:
                    group[i] = (dep, [])
        group.prune(record_history=False)
    attention.sync(model)
    return model
