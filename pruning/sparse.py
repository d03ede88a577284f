"""Compressed sparse storage of Conv/Linear weights (CSR, CSC, COO), and what it costs in bytes.

Unstructured pruning keeps tensor shapes; its gain is storage: only the non-zeros plus their indices. A state dict is
converted to plain containers that ``torch.load(weights_only=True)`` reads back exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

LAYOUTS = ("csr", "csc", "coo")

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


def storage(state: dict[str, Tensor]) -> dict[str, float | int]:
    """What a masked model's zeros buy: the share of zero Conv/Linear weights, and the state dict's bytes with those
    weights stored as CSR against stored densely."""
    weights = [t for k, t in state.items() if _is_layer_weight(k, t)]
    total = sum(t.numel() for t in weights)
    zeros = sum(int((t == 0).sum()) for t in weights)
    return {"weight_sparsity": zeros / max(total, 1), "csr_bytes": sparse_size_bytes(to_sparse(state, "csr")),
            "dense_bytes": dense_size_bytes(state)}
