"""Unstructured magnitude pruning (Han et al. 2015, "Learning both Weights and Connections") and sparse storage.

Individual weights with the smallest |w| are zeroed, over all Conv/Linear layers at once (``global``) or per layer
(``layer``). The masks live in ``torch.nn.utils.prune``'s forward pre-hooks (``weight = weight_orig * weight_mask``),
so they stay enforced while the model trains; :func:`make_permanent` folds them into plain tensors with exact zeros.

What this buys, honestly: the tensors keep their shapes and dense kernels (torch, ONNX Runtime) multiply the zeros
like any other value, so a 90 %-sparse model is *not* faster — MACs and latency stay those of the dense model. The
gain is storage: :func:`to_sparse` keeps only the non-zeros plus their indices (CSR, CSC or COO). Speed needs kernels
that skip zeros (torch's CSR matmul does, for Linear layers only; the convolutions of torch and ONNX Runtime used
here do not) or structured pruning, which removes whole channels (:mod:`pruning.surgery`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

SCOPES = ("global", "layer")
LAYOUTS = ("csr", "csc", "coo")


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


# ----------------------------------------------------------------------------------------------------------------
# Compressed sparse storage


def _is_layer_weight(key: str, t: Tensor) -> bool:
    # a state dict carries no module types: Conv/Linear weights are the floating "*weight" tensors of 2+ dims
    # (BatchNorm's weight is 1-D)
    return key.endswith("weight") and t.ndim >= 2 and t.is_floating_point()


def _index_dtype(*bounds: int) -> torch.dtype:
    # torch's compressed layouts accept int32 or int64 indices only, so int32 is the smallest dtype the components
    # can be handed back to torch.sparse_csr_tensor/_csc_tensor in as they are; it halves the index bytes of
    # torch's default int64, which decides the break-even: fp32 value + int32 index = 8 bytes per non-zero beats
    # 4 dense bytes per weight below 50 % density (int64 indices: only below 33 %).
    return torch.int32 if max(bounds) < 2**31 else torch.int64


@contextmanager
def _quiet_beta_warning() -> Iterator[None]:
    # torch warns once per process that CSR/CSC support is "in beta"; here they are only a storage format
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Sparse \w+ tensor support is in beta state")
        yield


def to_sparse(state: dict[str, Tensor], layout: str = "csr") -> dict[str, dict[str, Any]]:
    """Compress every Conv/Linear weight of a state dict, viewed as 2-D (out, in * kernel), into ``layout``.

    Args:
        state: a state dict with masks made permanent (:func:`make_permanent`).
        layout: ``csr`` (crow_indices, col_indices), ``csc`` (ccol_indices, row_indices) or ``coo`` (indices 2 x nnz).

    Returns:
        Per key, a plain dict: ``{"layout", "shape", <index tensors>, "values"}`` for weights and
        ``{"layout": "dense", "values"}`` for every other tensor — containers ``torch.load(weights_only=True)`` reads.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"Invalid layout: {layout!r} (must be one of {', '.join(LAYOUTS)})")
    masked = [k for k in state if k.endswith("_mask")]
    if masked:
        raise ValueError(f"state still holds pruning masks ({masked[0]}, ...): call make_permanent(model) first")
    out: dict[str, dict[str, Any]] = {}
    with _quiet_beta_warning():
        for key, t in state.items():
            t = t.detach().cpu()
            if not _is_layer_weight(key, t):
                out[key] = {"layout": "dense", "values": t.clone()}
                continue
            flat = t.reshape(t.shape[0], -1)
            rows, cols = flat.shape
            nnz = int(torch.count_nonzero(flat))
            dtype = _index_dtype(nnz, rows, cols)
            entry: dict[str, Any] = {"layout": layout, "shape": [int(s) for s in t.shape]}
            if layout == "csr":
                s = flat.to_sparse_csr()
                entry.update(crow_indices=s.crow_indices().to(dtype), col_indices=s.col_indices().to(dtype))
            elif layout == "csc":
                s = flat.to_sparse_csc()
                entry.update(ccol_indices=s.ccol_indices().to(dtype), row_indices=s.row_indices().to(dtype))
            else:
                s = flat.to_sparse_coo().coalesce()
                entry.update(indices=s.indices().to(dtype))
            entry["values"] = s.values().clone()
            out[key] = entry
    return out


def from_sparse(sparse: dict[str, dict[str, Any]]) -> dict[str, Tensor]:
    """Rebuild the dense state dict written by :func:`to_sparse` (exactly: ``torch.equal`` per tensor)."""
    state: dict[str, Tensor] = {}
    with _quiet_beta_warning():
        for key, e in sparse.items():
            if e["layout"] == "dense":
                state[key] = e["values"].clone()
                continue
            shape = e["shape"]
            size = (shape[0], 1 if shape[0] == 0 else int(torch.Size(shape).numel()) // shape[0])
            # invariant checks on: the components come from a file, and torch skips them otherwise (bad ones crash)
            if e["layout"] == "csr":
                s = torch.sparse_csr_tensor(e["crow_indices"], e["col_indices"], e["values"], size=size,
                                            check_invariants=True)
            elif e["layout"] == "csc":
                s = torch.sparse_csc_tensor(e["ccol_indices"], e["row_indices"], e["values"], size=size,
                                            check_invariants=True)
            elif e["layout"] == "coo":
                s = torch.sparse_coo_tensor(e["indices"].long(), e["values"], size=size, check_invariants=True)
            else:
                raise ValueError(f"{key}: unknown layout {e['layout']!r} (expected dense or one of {', '.join(LAYOUTS)})")
            state[key] = s.to_dense().reshape(shape)
    return state


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def sparse_size_bytes(sparse: dict[str, dict[str, Any]]) -> int:
    """Bytes of every tensor in a :func:`to_sparse` result: values + indices, and the tensors kept dense."""
    return sum(_nbytes(v) for e in sparse.values() for v in e.values() if isinstance(v, Tensor))


def dense_size_bytes(state: dict[str, Tensor]) -> int:
    """Bytes of every tensor of a dense state dict."""
    return sum(_nbytes(t) for t in state.values())


def save_sparse(path: str | Path, sparse: dict[str, dict[str, Any]]) -> None:
    """Write a :func:`to_sparse` result with ``torch.save`` (plain containers, no pickled code)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(sparse, path)


def load_sparse(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a file written by :func:`save_sparse` with ``weights_only=True`` (no code runs on load)."""
    return torch.load(path, map_location="cpu", weights_only=True)
