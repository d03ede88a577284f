"""prune: the method of ``prune.method`` on the dense model -> models/pruned.pt, the step records, the layer table.

The stage only does I/O around the method: it looks the method up in the registry, builds its context, applies it,
checks the output shape, and writes the model file (the method's edits), prune_steps.json and prune.json. It names
no method (pruning/methods/__init__.py).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pruning import hf
from pruning.allocation.latency_table import LatencyTable
from pruning.checkpoint import load_model, save_model
from pruning.counting import count_macs, layer_changes
from pruning.data import forward
from pruning.errors import GraphTraceError, params_errors
from pruning.methods import METHODS, Context
from pruning.stages.common import paths, prepared_data, provenance, write_json
from pruning.task import build_task
from pruning.zoo import build_model

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pruning.config import Config


@dataclass(frozen=True)
class PruneResult:
    method: str
    dense_macs: int
    pruned_macs: int
    macs_reduction: float
    accuracy: float


def run(cfg: Config, root: str | Path = ".") -> PruneResult:
    """Prune a copy of the dense model with ``prune.method``."""
    p = paths(cfg, root)
    data = prepared_data(cfg, root)
    dense, record = load_model(p.dense_model, cfg.model.arch)
    shape, spec = data.input_shape, data.spec

    def build() -> nn.Module:  # the dense architecture, initialised as the train stage initialised it
        torch.manual_seed(cfg.seed)
        return build_model(record["arch"], record["kwargs"], shape, data.num_classes)

    ctx = Context(data=data, seed=cfg.seed, device=cfg.device, build=build, latency_table=Path(p.latency_table),
                  opset=cfg.export.opset, task=build_task(cfg.task), ranks=cfg.distributed)
    with params_errors("prune"):
        outcome = METHODS[cfg.prune.method].apply(copy.deepcopy(dense), cfg.prune, ctx)
    model = outcome.model
    x = data.example
    with torch.no_grad():
        if forward(model.eval(), x).shape != forward(dense.eval(), x).shape:
            raise GraphTraceError("pruning changed the output shape: add the output layer to prune.ignored_layers")
    dense_macs, _ = count_macs(dense, spec)
    pruned_macs, pruned_params = count_macs(model, spec)
    save_model(p.pruned_model, model, arch=record["arch"], kwargs=record["kwargs"], input_shape=shape,
               num_classes=data.num_classes, edits=outcome.edits, meta=provenance(cfg, "prune", root),
               example=data.example)
    result = PruneResult(cfg.prune.method, dense_macs, pruned_macs, dense_macs / pruned_macs,
                         outcome.steps[-1]["accuracy"])
    write_json(p.prune_steps, outcome.steps)
    if not Path(p.latency_table).is_file():  # a persistent DVC out: it exists (empty) whichever method ran
        LatencyTable(batch=1, threads=1).save(p.latency_table)
    reloads = hf.rebuilds(model)  # None: no Hugging Face model
    if reloads is False:
        log.warning("the pruned model's %s cannot state its shapes (transformers derives its head size from "
                    "hidden_size / num_attention_heads, or refuses a head count that does not divide the hidden "
                    "size): save_pretrained would not reload it; the pipeline's model file and ONNX file do",
                    type(model.config).__name__)
    write_json(p.prune_report, {**result.__dict__, "pruned_params": pruned_params, **outcome.report,
                                "edits": [e["kind"] for e in outcome.edits], "layers": layer_changes(dense, model),
                                "save_pretrained_reloads": reloads})
    return result
