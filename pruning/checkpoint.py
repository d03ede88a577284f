"""Pickle-free model files: architecture + ordered edits + weights, read with ``torch.load(weights_only=True)``.

A file holds plain containers only: the architecture id (zoo name or ``module:callable``) and its kwargs, the input
shape and class count, the **edits** that turned the dense model into this one, in order, the state dict, and
provenance (params hash, stage, commit). Loading builds the dense architecture, replays the edits through
:data:`REPLAY`, then loads the weights strictly. The edits a method can record:

- ``{"kind": "blocks", "names": [...]}``: residual blocks replaced by their shortcuts (:mod:`pruning.residual`);
- ``{"kind": "layers", "names": [...]}``: transformer layers removed from their layer lists (:mod:`pruning.layers`);
- ``{"kind": "channels", "history": [...]}``: torch-pruning's pruning history (:mod:`pruning.dependency`);
- ``{"kind": "mask", "layers": [...]}``: weights zeroed in place (unstructured / lottery). The zeros are in the
  weights, so nothing is replayed; training must keep them zero (:func:`constraints`).

A new kind of edit = one entry in :data:`REPLAY` (and in :data:`CONSTRAINTS` if training must respect it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning import dependency, kv_groups, layers, residual
from pruning.atomic import replacing
from pruning.counting import example_input
from pruning.data import SCORED_OUTPUT, map_inputs, scored_output
from pruning.errors import ModelError
from pruning.hf import HF
from pruning.training import Callback
from pruning.zoo import ZOO, build_model

FORMAT_VERSION = 2

Edit = dict[str, Any]


def blocks_edit(names: Sequence[str]) -> Edit:
    return {"kind": "blocks", "names": [str(n) for n in names]}


def channels_edit(history: dependency.History) -> Edit:
    return {"kind": "channels", "history": [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in history]}


def layers_edit(names: Sequence[str]) -> Edit:
    return {"kind": "layers", "names": [str(n) for n in names]}


def mask_edit(layers: Sequence[str]) -> Edit:
    return {"kind": "mask", "layers": [str(n) for n in layers]}


REPLAY: dict[str, Callable[[nn.Module, Edit, Any], nn.Module]] = {  # (model, edit, shape or example input)
    "blocks": lambda model, e, shape: residual.remove(model, e["names"], shape),
    "layers": lambda model, e, shape: layers.remove(model, e["names"]),
    "channels": lambda model, e, shape: dependency.replay(model, shape, e["history"]),
    "kv_groups": lambda model, e, shape: kv_groups.remove(model, e["removed"], example_input(shape)),
    "mask": lambda model, e, shape: model,
}


class KeepZeros(Callback):
    """Keeps masked weights at zero while a model trains: after every optimizer step they are zeroed again."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        self.masks = [(modules[n].weight, (modules[n].weight.detach() != 0)) for n in layers]

    @torch.no_grad()
    def on_step(self, model: nn.Module, step: int) -> None:
        for weight, mask in self.masks:
            weight.mul_(mask.to(weight.device))


CONSTRAINTS: dict[str, Callable[[nn.Module, Edit], Callback]] = {
    "mask": lambda model, e: KeepZeros(model, e["layers"]),
}


def save_model(path: str | Path, model: nn.Module, *, arch: str, kwargs: dict[str, Any],
               input_shape: Sequence[int] | None, num_classes: int, edits: Sequence[Edit] = (),
               meta: dict[str, Any] | None = None, example: Any = None) -> None:
    """Write a self-describing model file (temp file + rename: a kill never leaves half a file).

    A model without a single float input (``input_shape`` None: several inputs, token ids) records ``example``, an
    input of its structure, shapes and dtypes filled with zeros (no data travels in a model file), to retrace it.
    """
    if input_shape is None and example is None:
        raise ValueError("a model without an input_shape needs an example input")
    record = {
        "format": FORMAT_VERSION,
        "arch": arch,
        "kwargs": dict(kwargs),
        "input_shape": [int(s) for s in input_shape] if input_shape is not None else None,
        "example": None if input_shape is not None else map_inputs(torch.zeros_like, example),
        "num_classes": int(num_classes),
        "edits": list(edits),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
        "output": scored_output(model),  # the output the task scores (model.output), if one is named
    }
    with replacing(path) as f:
        torch.save(record, f)


def save_like(path: str | Path, model: nn.Module, record: dict[str, Any], meta: dict[str, Any]) -> None:
    """Save ``model`` with the architecture and edits of ``record`` (a stage that only changed the weights)."""
    save_model(path, model, arch=record["arch"], kwargs=record["kwargs"], input_shape=record["input_shape"],
               num_classes=record["num_classes"], edits=record["edits"], meta=meta, example=record.get("example"))


def _from_v1(record: dict[str, Any]) -> dict[str, Any]:
    """Format 1 (removed_blocks + history fields) as edits: depth came first, then channels."""
    edits = [blocks_edit(record["removed_blocks"])] if record.get("removed_blocks") else []
    edits += [{"kind": "channels", "history": record["history"]}] if record.get("history") else []
    return {**{k: v for k, v in record.items() if k not in ("removed_blocks", "history")}, "format": 2, "edits": edits}


def load_record(path: str | Path) -> dict[str, Any]:
    """Read a model file with ``weights_only=True`` (no code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found: run the stage that writes it first")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; all mean "not our file"
        raise ModelError(f"{path} is not a model file of this pipeline: {type(exc).__name__}: {exc}") from None
    if isinstance(record, dict) and record.get("format") == 1:
        record = _from_v1(record)
    if not isinstance(record, dict) or record.get("format") != FORMAT_VERSION:
        raise ModelError(f"{path} is not a model file of this pipeline (format {FORMAT_VERSION})")
    unknown = [e.get("kind") for e in record["edits"] if e.get("kind") not in REPLAY]
    if unknown:
        raise ModelError(f"{path} records edits this version cannot replay: {unknown} (known: {', '.join(REPLAY)})")
    return record


def load_model(path: str | Path, arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a (possibly pruned) model from its file. Returns (model in eval mode, record).

    The dense architecture is built from the zoo (or user code), the edits are replayed in order, then the weights
    are loaded strictly. A model file is untrusted: the code that builds it never comes from the file. ``arch`` is the
    architecture the caller's configuration names (params.yaml's ``model.arch``) and the file's must equal it; without
    ``arch`` only a zoo architecture is accepted from a file (a recorded ``module:callable`` could name any function,
    ``os:system`` included).
    """
    record = load_record(path)
    recorded = record["arch"]
    if arch is not None and recorded != arch:
        raise ModelError(f"{path} was built by {recorded!r}, but the configured architecture is {arch!r}: rerun the "
                         "stage that writes it (dvc repro does)")
    if arch is None and recorded not in (*ZOO, HF):  # HF: transformers' own classes only (pruning.hf)
        raise ModelError(f"{path} records the architecture {recorded!r}, which is not a zoo name: a model file may not "
                         "choose code to run; load it with the configured architecture")
    shape = tuple(record["input_shape"]) if record["input_shape"] is not None else None
    model = build_model(record["arch"], record["kwargs"], shape, record["num_classes"])
    for edit in record["edits"]:
        model = REPLAY[edit["kind"]](model, edit, spec(record))
    try:
        model.load_state_dict(record["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit the rebuilt architecture: {exc}") from None
    output = record.get("output")
    if output is not None:
        if not isinstance(output, str):
            raise ModelError(f"{path}: its scored output is no name: {output!r}")
        setattr(model, SCORED_OUTPUT, output)
    return model.eval(), record


def spec(record: dict[str, Any]) -> Any:
    """What tracing the recorded model takes (:mod:`pruning.counting`): its input shape, else its example input."""
    return tuple(record["input_shape"]) if record["input_shape"] is not None else record["example"]


def constraints(model: nn.Module, record: dict[str, Any]) -> list[Callback]:
    """Training callbacks that keep ``model`` what its edits made it (masked weights stay zero)."""
    return [CONSTRAINTS[e["kind"]](model, e) for e in record["edits"] if e["kind"] in CONSTRAINTS]


def removed_blocks(record: dict[str, Any]) -> list[str]:
    """The residual blocks a model file's edits removed, in order."""
    return [n for e in record["edits"] if e["kind"] == "blocks" for n in e["names"]]
