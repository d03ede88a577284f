"""Whole transformer layers dropped: an encoder's or decoder's layer list shrinks, and what describes it follows.

A transformer layer maps the residual stream to itself, ``h -> h + attention(h) + mlp(...)``; many layers of a trained
model change it little, and removing the least influential ones is a strong, cheap baseline (ShortGPT, Men et al.
2024: "block influence", 1 - cosine similarity between a layer's input and output). Minitron (Muralidharan et al. 2024)
ranks layers by the loss increase when each is removed; both are offered (:data:`pruning.methods.depth.CRITERIA`).

A layer stack is found by layout, not by class: an ``nn.ModuleList`` of modules of one class, each holding one
attention layer (:func:`pruning.attention.find`) — BERT's ``encoder.layer``, ViT's, Llama's ``model.layers``. A
layer is named by its path in the dense model (``bert.encoder.layer.1``). Removing layers rebuilds the list without
them (:func:`remove`) and sets what transformers reads: every remaining layer's ``layer_idx`` (key/value cache slots),
``config.num_hidden_layers`` and ``config.layer_types`` (per-layer attention kinds), so the model runs, reloads with
``save_pretrained`` and a model file replays the removal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from pruning import attention


def stacks(model: nn.Module) -> dict[str, nn.ModuleList]:
    """The layer stacks of ``model`` by name, in module order."""
    found = {}
    for name, module in model.named_modules():
        if (isinstance(module, nn.ModuleList) and len(module) >= 1 and len({type(m) for m in module}) == 1
                and all(len(attention.find(m)) == 1 for m in module)):
            found[name] = module
    return found


def find(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer of every stack, by name (``<stack>.<index>``), in order."""
    return {f"{name}.{i}": layer for name, stack in stacks(model).items() for i, layer in enumerate(stack)}


def remove(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Remove the named layers (names as :func:`find` gives them on this model); every name is checked first, and a
    stack keeps at least one layer. Returns ``model``, changed in place."""
    by_stack = stacks(model)
    parts = {n: n.rpartition(".") for n in names}  # name -> (stack, ".", index)
    unknown = [n for n, (stack, _, i) in parts.items()
               if stack not in by_stack or not i.isdigit() or int(i) >= len(by_stack[stack])]
    if unknown:
        raise ValueError(f"no transformer layer {', '.join(unknown)} (layers: {', '.join(find(model)) or 'none'})")
    config = getattr(model, "config", None)
    for stack_name, stack in by_stack.items():
        gone = {int(i) for stack, _, i in parts.values() if stack == stack_name}
        if not gone:
            continue
        if len(gone) >= len(stack):
            raise ValueError(f"cannot remove all {len(stack)} layers of {stack_name}: one at least must stay")
        kept = [layer for i, layer in enumerate(stack) if i not in gone]
        owner, _, attr = stack_name.rpartition(".")
        setattr(model.get_submodule(owner), attr, nn.ModuleList(kept))
        for i, layer in enumerate(kept):
            for m in layer.modules():
                if isinstance(getattr(m, "layer_idx", None), int):
                    m.layer_idx = i
        if config is not None and getattr(config, "num_hidden_layers", None) == len(stack):
            types = getattr(config, "layer_types", None)
            if isinstance(types, list) and len(types) == len(stack):
                config.layer_types = [t for i, t in enumerate(types) if i not in gone]
            config.num_hidden_layers = len(kept)
    return model


def _hidden(value: Any) -> torch.Tensor | None:
    """The hidden states of a layer's input or output: a tensor, or a tuple's / ModelOutput's first."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _states_in(args: tuple, kwargs: dict) -> Any:
    """The hidden states a layer was called with (first positional argument, or ``hidden_states=``)."""
    return args[0] if args else kwargs.get("hidden_states")


@contextlib.contextmanager
def _around(hooks: list[tuple[nn.Module, Callable[..., Any], Callable[..., Any]]]) -> Iterator[None]:
    """Forward pre-hooks and forward hooks (both with keyword arguments) on layers, removed on exit."""
    handles = [h for layer, pre, post in hooks for h in (layer.register_forward_pre_hook(pre, with_kwargs=True),
                                                         layer.register_forward_hook(post, with_kwargs=True))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def observed(layers: dict[str, nn.Module], see: Callable[[str, torch.Tensor, torch.Tensor], None]) -> Iterator[None]:
    """While inside, every call of a named layer calls ``see(name, input hidden states, output hidden states)``."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, layer in layers.items():
        def pre(module: nn.Module, args: tuple, kwargs: dict, name: str = name) -> None:
            inputs[name] = _states_in(args, kwargs)

        def post(module: nn.Module, args: tuple, kwargs: dict, out: Any, name: str = name) -> None:
            h_out = _hidden(out)
            if h_out is not None and isinstance(inputs.get(name), torch.Tensor):
                see(name, inputs.pop(name), h_out)

        hooks.append((layer, pre, post))
    with _around(hooks):
        yield


@contextlib.contextmanager
def skipped(layer: nn.Module) -> Iterator[None]:
    """While inside, ``layer`` returns its input unchanged (as if removed), in the structure of its output."""
    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        module._pruning_skipped_input = _states_in(args, kwargs)

    def post(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        h = module.__dict__.pop("_pruning_skipped_input")
        return h if isinstance(out, torch.Tensor) else (h, *out[1:])  # a tensor, or a tuple led by the states

    with _around([(layer, pre, post)]):
        yield
