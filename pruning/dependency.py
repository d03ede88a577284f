"""torch-pruning's dependency graph behind one typed call: channel/filter removal that keeps coupled layers consistent.

Why a wrapper at all: torch-pruning's ``BasePruner`` takes ~30 arguments and raises bare tracing errors; this module
gives it one typed call, names the layer when something goes wrong (and the argument to change, in ``field``), and
replays a recorded pruning history on a freshly built model (``DG.load_pruning_history``) for the model files.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence

import torch_pruning as tp
from torch import nn
from torch_pruning.pruner.algorithms.scheduler import linear_scheduler

from pruning.counting import example_input
from pruning.errors import GraphTraceError

log = logging.getLogger(__name__)

History = list[tuple[str, bool, list[int]]]  # torch-pruning's pruning_history(): (layer name, out-channels?, indices)


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
    """The modules named in ``names`` (GraphTraceError naming an unknown one, ``field="ignored_layers"``)."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            some = ", ".join(n for n in list(modules)[1:12] if n)
            raise GraphTraceError(f"no layer named {name!r} in the model (e.g. {some})", field="ignored_layers")
    return [modules[name] for name in names]


def ignored_modules(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The classifier plus the modules named in ``names``: what channel pruning must leave alone."""
    return [classifier_of(model), *modules_named(model, names)]


def build_pruner(model: nn.Module, input_shape: Sequence[int], importance: tp.importance.Importance, *,
                 ratio: float, scope: str, iterative_steps: int, round_to: int | None, max_layer_ratio: float,
                 ignored: list[nn.Module], scheduler: Callable[[float, int], list[float]] | None = None,
                 ratio_dict: dict[nn.Module, float] | None = None) -> tp.pruner.BasePruner:
    """One typed call for torch-pruning's BasePruner; tracing failures become GraphTraceError naming the layer.

    ``ratio_dict`` (group root -> ratio, from latency allocation) overrides ``ratio`` for those groups. With a uniform
    ``ratio`` and ``round_to``, a group too narrow to keep even ``round_to`` channels (a squeeze-excitation layer of 4)
    stays dense, with a warning naming it; a ratio that leaves a layer nothing, or a ``round_to`` no group can keep,
    is an error naming the layer.
    """
    pruner = _pruner(model, input_shape, importance, ratio, scope, iterative_steps, round_to, max_layer_ratio, ignored,
                     scheduler, ratio_dict)
    if scope == "uniform" and not ratio_dict:
        narrow = _too_narrow(model, pruner, ratio, round_to)
        if narrow:
            names = {m: n for n, m in model.named_modules()}
            log.warning("kept dense (fewer than round_to=%s channels would remain): %s", round_to,
                        ", ".join(names.get(m, type(m).__name__) for m in narrow))
            pruner = _pruner(model, input_shape, importance, ratio, scope, iterative_steps, round_to, max_layer_ratio,
                             [*ignored, *narrow], scheduler, ratio_dict)
    return pruner


def _pruner(model: nn.Module, input_shape: Sequence[int], importance: tp.importance.Importance, ratio: float,
            scope: str, iterative_steps: int, round_to: int | None, max_layer_ratio: float, ignored: list[nn.Module],
            scheduler: Callable[[float, int], list[float]] | None,
            ratio_dict: dict[nn.Module, float] | None) -> tp.pruner.BasePruner:
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
    return pruner


def _too_narrow(model: nn.Module, pruner: tp.pruner.BasePruner, ratio: float, round_to: int | None) -> list[nn.Module]:
    """Group roots that ``round_to`` would empty (to be kept dense); GraphTraceError naming the layer when ``ratio``
    alone empties one, or when ``round_to`` would empty every group.

    Left alone, torch-pruning would remove every channel of such a group.
    """
    dg = pruner.DG
    names = {m: n for n, m in model.named_modules()}
    narrow, groups = [], 0
    for group in dg.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        module = group[0].dep.target.module
        channels = dg.get_out_channels(module)
        if not channels:
            continue
        groups += 1
        keep = int(channels * (1 - ratio))
        name = names.get(module, type(module).__name__)
        if keep <= 0:
            raise GraphTraceError(f"pruning would remove every channel of layer {name!r}: ratio {ratio} leaves none "
                                  f"of its {channels} channels", field="ratio")
        if round_to and keep < round_to:
            narrow.append(module)
    if groups and len(narrow) == groups:
        name = names.get(narrow[0], type(narrow[0]).__name__)
        raise GraphTraceError(f"pruning would remove every channel of layer {name!r}: round_to {round_to} exceeds the "
                              f"{int(dg.get_out_channels(narrow[0]) * (1 - ratio))} channels left, and of every other "
                              "layer", field="round_to")
    return narrow


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


def prune_step(pruner: tp.pruner.BasePruner, model: nn.Module) -> None:
    """One ``pruner.step()``, with errors that name the layer instead of a torch-pruning traceback."""
    try:
        pruner.step()
    except (RuntimeError, IndexError, ValueError) as exc:
        check_layers_not_empty(model)
        raise GraphTraceError(f"torch-pruning failed while removing channels: {type(exc).__name__}: {exc}") from None
    check_layers_not_empty(model)


def replay(model: nn.Module, input_shape: Sequence[int], history: History) -> nn.Module:
    """Remove the channels of a recorded ``pruner.pruning_history()`` from a freshly built model, in place; returns it."""
    dg = tp.DependencyGraph().build_dependency(model, example_input(input_shape))
    dg.load_pruning_history([(n, out, idxs) for n, out, idxs in history])
    return model
