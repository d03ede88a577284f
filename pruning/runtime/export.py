"""ONNX export and the parity check against torch.

Exporter choice: the TorchScript exporter (``dynamo=False``) is the default. On these CNNs it exports in ~0.2 s
against ~3.3 s for the torch.export-based one, gives a plain dynamic batch axis, and needs no onnxscript at run time;
every export is verified by the parity check, so a silent mis-export fails the stage. torch 2.9+ marks it deprecated,
hence ``exporter="dynamo"`` switches to the torch.export path without code changes.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from pruning import attention
from pruning.counting import example_input
from pruning.data import forward, has_sequence, logits_of, map_inputs, scored_output, tensors
from pruning.errors import ModelError, ParityError
from pruning.runtime.session import INPUT_NAME, OUTPUT_NAME, run, session

log = logging.getLogger(__name__)


def input_names(model: nn.Module, example: Any) -> list[str]:
    """The ONNX input names: ``input`` for a single tensor, the dict's keys, or the names of ``forward``'s parameters
    for a tuple of inputs (``image``, ``extra``: what the model calls them)."""
    if isinstance(example, torch.Tensor):
        return [INPUT_NAME]
    if isinstance(example, dict):
        return list(example)
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    n = len(example)
    return [p.name for p in params[:n]] if len(params) >= n else [f"input_{i}" for i in range(n)]


def dynamic_axes(example: Any, names: list[str]) -> dict[str, dict[int, str]]:
    """Every input's dynamic axes: the batch (axis 0), and the sequence (axis 1) of integer inputs of shape
    (batch, sequence) (token ids, attention masks, token types), so that one file serves every batch size and text
    length."""
    return {n: {0: "batch", 1: "sequence"} if has_sequence(t) else {0: "batch"}
            for n, t in zip(names, tensors(example), strict=True)}


class _Scored(nn.Module):
    """A model whose outputs are several, as exported: only the one it is scored on (:func:`scored_output`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return logits_of(self.model(*args, **kwargs), scored_output(self.model))


def export_onnx(model: nn.Module, spec: Any, path: str | Path, opset: int, exporter: str = "torchscript") -> None:
    """Export ``model`` (eval mode) to a single ONNX file with a dynamic batch axis on every input and the output (and
    a dynamic sequence axis on token inputs, :func:`dynamic_axes`), then run onnx.checker. ``spec``: a per-sample
    shape, or an example input (a tensor, a tuple or a dict of tensors, e.g. image + features, token ids + attention
    mask), traced at batch 2."""
    model.eval()
    one = example_input(spec)
    example = map_inputs(lambda t: t[:1].repeat(2, *([1] * (t.dim() - 1))), one)
    names = input_names(model, example)
    axes = dynamic_axes(example, names)
    args, kwargs = ((), example) if isinstance(example, dict) else \
        ((example,) if isinstance(example, torch.Tensor) else tuple(example), None)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    exported = _Scored(model) if scored_output(model) else model  # the file's one output: the one scored
    try:
        # a Hugging Face model without its key/value cache: the logits are its one output
        with warnings.catch_warnings(), attention.exportable(model):
            # The TorchScript exporter's deprecation notice is known and documented above; keep the logs clean.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            # Python branches on shapes the tracer freezes (transformers' masking code) and ONNX's spelling of
            # advanced indexing: warnings about traces that may not generalise; the parity check on real samples of
            # other batch sizes (and sequence lengths) is what says whether this one does
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
            if exporter == "dynamo":
                dims = {"batch": torch.export.Dim("batch", min=1, max=65536),
                        "sequence": torch.export.Dim("sequence", min=1, max=65536)}
                shapes = [{axis: dims[what] for axis, what in axes[n].items()} for n in names]
                torch.onnx.export(exported, args, str(path), kwargs=kwargs, dynamo=True, external_data=False,
                                  opset_version=opset, input_names=names, output_names=[OUTPUT_NAME],
                                  dynamic_shapes=dict(zip(names, shapes, strict=True)) if kwargs is not None
                                  else tuple(shapes), verbose=False)
            else:
                torch.onnx.export(exported, args, str(path), kwargs=kwargs, dynamo=False, opset_version=opset,
                                  input_names=names, output_names=[OUTPUT_NAME],
                                  dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}})
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # exporter and checker errors come in many types
        raise ModelError(f"ONNX export of {path} failed: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Parity:
    """How far ONNX Runtime's outputs are from torch's on the same real samples."""

    max_abs: float  # max |torch - ORT|
    score: float  # max |torch - ORT| / (atol + rtol * |torch|): <= 1 is numpy.allclose(ORT, torch, rtol, atol)


@torch.no_grad()
def parity(model: nn.Module, onnx_path: str | Path, x: Any, atol: float, rtol: float,
           name: str = "exported") -> Parity:
    """Compare torch and ORT outputs on real samples ``x`` (an array, or a model's inputs) with numpy.allclose's
    rule, |ORT - torch| <= atol + rtol * |torch| elementwise (a relative part, so large logits are held to fp32
    precision, not to an absolute 1e-4).

    ParityError naming ``name`` (dense / pruned: the file is a temporary one) when any element is outside.
    """
    model.eval()
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    expected = forward(model, x).numpy()
    got = run(session(onnx_path), x)
    diff = np.abs(expected - got)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero tolerance: equal is within it, any difference not
        ratio = np.where(diff == 0, 0.0, diff / (atol + rtol * np.abs(expected)))
    result = Parity(float(np.max(diff)), float(np.max(ratio)))
    if not result.score <= 1.0:  # also catches NaN
        worst = np.unravel_index(int(np.nanargmax(ratio)) if not np.isnan(ratio).all() else 0, diff.shape)
        raise ParityError(f"the {name} model's ONNX export differs from torch beyond atol {atol:g} + rtol {rtol:g} "
                          f"x |torch|: {diff[worst]:.3g} at output {tuple(int(i) for i in worst)} (torch "
                          f"{expected[worst]:.6g}, onnxruntime {got[worst]:.6g}); max |difference| {result.max_abs:.3g}",
                          field="parity_atol")
    return result
