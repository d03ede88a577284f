"""prune: dependency-graph channel removal -> models/pruned.pt, the step records and the per-layer table."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pruning.config import Config
from pruning.errors import GraphTraceError
from pruning.schedule import run_schedule, search_ratio
from pruning.stages.common import load_data, provenance, write_json
from pruning.surgery import channel_table, clone, count_macs, example_input, load_model, save_model


@dataclass(frozen=True)
class PruneResult:
    ratio: float
    dense_macs: int
    pruned_macs: int
    macs_reduction: float
    accuracy: float


def run_prune(cfg: Config) -> PruneResult:
    """Prune the dense model to ``prune.ratio`` or to ``prune.target_macs_reduction``."""
    data = load_data(cfg)
    dense, record = load_model(cfg.paths.dense_model)
    model = clone(dense)
    p = cfg.prune
    ratio = p.ratio if p.ratio is not None else search_ratio(model, data.input_shape, p, p.target_macs_reduction,
                                                             data.train, cfg.seed)
    before = channel_table(dense)
    result = run_schedule(model, data.input_shape, p, ratio, data.train, data.test, cfg.seed)
    x = example_input(data.input_shape)
    with torch.no_grad():
        if model.eval()(x).shape != dense.eval()(x).shape:
            raise GraphTraceError("pruning changed the output shape: add the output layer to prune.ignored_layers")
    dense_macs, _ = count_macs(dense, data.input_shape)
    pruned_macs, pruned_params = count_macs(model, data.input_shape)
    after = channel_table(model)
    layers = [{"layer": name, "type": row["type"], "in_before": row["in"], "out_before": row["out"],
               "in_after": after[name]["in"], "out_after": after[name]["out"]} for name, row in before.items()]
    save_model(cfg.paths.pruned_model, model, arch=record["arch"], kwargs=record["kwargs"],
               input_shape=data.input_shape, num_classes=data.num_classes, history=result.history,
               meta=provenance(cfg, "prune"))
    out = PruneResult(ratio, dense_macs, pruned_macs, dense_macs / pruned_macs, result.steps[-1]["accuracy"])
    write_json(cfg.paths.prune_steps, result.steps)
    write_json(cfg.paths.prune_report, {**out.__dict__, "criterion": p.criterion, "scope": p.scope,
                                        "iterative_steps": p.iterative_steps, "pruned_params": pruned_params,
                                        "layers": layers})
    return out
