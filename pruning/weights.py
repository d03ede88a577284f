"""Loading a user's trained weights into the architecture params.yaml names (``model.weights``).

A weights file is untrusted input: a ``.pt`` / ``.pth`` is read with ``torch.load(weights_only=True)`` (plain tensors
and containers, no code runs), a ``.safetensors`` file with the safetensors reader (no code at all). The architecture
never comes from the file: it is built from ``model.arch`` first, then the tensors are copied in.

Why a wrapper around ``load_state_dict``: what people actually save is rarely the bare state dict of the module they
build. This accepts the common shapes of a training checkpoint — a bare state dict, a dict holding it under
``state_dict`` / ``model_state_dict`` / ``model`` / ``net`` / ``module``, keys prefixed by ``module.`` (DataParallel /
DDP) or ``_orig_mod.`` (``torch.compile``) — and turns a mismatch into one line listing the first missing, unexpected
and mis-shaped keys, instead of torch's multi-page RuntimeError.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.errors import ModelError

# Where training scripts commonly put the state dict inside a checkpoint dict, in the order they are tried.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
# Prefixes wrappers add to every key: DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_SHOWN = 5  # keys named per kind of mismatch


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                          for k, v in obj.items())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (ModelError with ``field="weights"`` naming the file when it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} not found", field="weights")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"{path} is not a readable .safetensors file: {exc}", field="weights") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals and corrupt files come in many types: all mean "not loadable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"{path} cannot be read with torch.load(weights_only=True) (a state dict of tensors is "
                         f"expected; whole pickled models are refused): {type(exc).__name__}: {first}",
                         field="weights") from None
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
        found = ", ".join(map(str, list(obj)[:8]))
        raise ModelError(f"{path} holds a dict without a state dict of tensors under any of "
                         f"{', '.join(CHECKPOINT_KEYS)} (its keys: {found})", field="weights")
    raise ModelError(f"{path} holds a {type(obj).__name__}, not a state dict (save it with "
                     "torch.save(net.state_dict(), path))", field="weights")


def _strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes that every key carries and the model's own keys do not."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in expected):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_weights(model: nn.Module, path: str | Path, arch: str = "the model") -> nn.Module:
    """Copy the weights of ``path`` into ``model`` (strict: every key, every shape). Returns ``model``.

    ModelError (``field="weights"``) listing the first missing / unexpected / mis-shaped keys when they do not fit.
    """
    expected = model.state_dict()
    state = _strip_prefixes(read_state_dict(path), set(expected))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{label} {len(keys)}: {_listed(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatches (file vs model)", shapes)) if keys]
        raise ModelError(f"weights {path} do not fit {arch}: " + "; ".join(parts), field="weights")
    with torch.no_grad():
        model.load_state_dict({k: state[k].to(expected[k].dtype) for k in expected}, strict=True)
    return model
