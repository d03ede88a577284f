"""prune: dependency-graph channel removal -> models/pruned.pt, the step records and the per-layer table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruning.config import Config, PruneConfig
from pruning.depth import prune_depth
from pruning.errors import ConfigError, GraphTraceError
from pruning.schedule import CALIBRATION_BATCH, run_schedule, search_ratio
from pruning.stages.common import Data, load_data, provenance, write_json
from pruning.surgery import channel_table, clone, count_macs, example_input, load_model, save_model
from pruning.train import evaluate


@dataclass(frozen=True)
class PruneResult:
    ratio: float
    dense_macs: int
    pruned_macs: int
    macs_reduction: float
    accuracy: float


def run_prune(cfg: Config) -> PruneResult:
    """Remove ``prune.depth_blocks`` residual blocks, then channels to ``prune.ratio`` or ``target_macs_reduction``."""
    data = load_data(cfg)
    dense, record = load_model(cfg.paths.dense_model)
    model = clone(dense)
    p = cfg.prune
    dense_macs, _ = count_macs(dense, data.input_shape)
    removed = _prune_depth(model, data, p, cfg.seed)
    ratio = p.ratio if p.ratio is not None else search_ratio(model, data.input_shape, p, p.target_macs_reduction,
                                                             data.train, cfg.seed, reference_macs=dense_macs)
    before = channel_table(dense)
    result = run_schedule(model, data.input_shape, p, ratio, data.train, data.test, cfg.seed)
    if removed:  # the schedule's step 0 is the depth-pruned model: put the dense one before it
        result.steps = [{"step": 0, **_dense_record(dense, data)}] + [{**s, "step": s["step"] + 1} for s in result.steps]
    x = example_input(data.input_shape)
    with torch.no_grad():
        if model.eval()(x).shape != dense.eval()(x).shape:
            raise GraphTraceError("pruning changed the output shape: add the output layer to prune.ignored_layers")
    pruned_macs, pruned_params = count_macs(model, data.input_shape)
    after = channel_table(model)
    layers = [{"layer": name, "type": row["type"], "in_before": row["in"], "out_before": row["out"],
               "in_after": after.get(name, {}).get("in", 0), "out_after": after.get(name, {}).get("out", 0)}
              for name, row in before.items()]  # a layer of a removed block has 0 channels left
    layers += [{"layer": name, "type": row["type"], "in_before": None, "out_before": None, "in_after": row["in"],
                "out_after": row["out"]} for name, row in after.items() if name not in before]  # a moved shortcut
    save_model(cfg.paths.pruned_model, model, arch=record["arch"], kwargs=record["kwargs"],
               input_shape=data.input_shape, num_classes=data.num_classes, history=result.history,
               removed_blocks=removed, meta=provenance(cfg, "prune"))
    out = PruneResult(ratio, dense_macs, pruned_macs, dense_macs / pruned_macs, result.steps[-1]["accuracy"])
    write_json(cfg.paths.prune_steps, result.steps)
    write_json(cfg.paths.prune_report, {**out.__dict__, "criterion": p.criterion, "scope": p.scope,
                                        "iterative_steps": p.iterative_steps, "pruned_params": pruned_params,
                                        "removed_blocks": removed, "layers": layers})
    return out


def _prune_depth(model: nn.Module, data: Data, p: PruneConfig, seed: int) -> list[str]:
    """Remove ``prune.depth_blocks`` residual blocks (ranked on a calibration sample); their names, in order."""
    if not p.depth_blocks:
        return []
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train.x), generator=gen)[: p.calibration_batches * CALIBRATION_BATCH]
    try:
        return prune_depth(model, data.train.x[idx], data.train.y[idx], p.depth_blocks, p.depth_criterion,
                           data.input_shape)
    except ValueError as exc:  # too many blocks, or none removable in this architecture
        raise ConfigError(f'Invalid "prune.depth_blocks": {p.depth_blocks} ({exc})') from None


def _dense_record(dense: nn.Module, data: Data) -> dict[str, Any]:
    macs, params = count_macs(dense, data.input_shape)
    accuracy, loss = evaluate(dense, data.test.x, data.test.y)
    return {"ratio": 0.0, "macs": macs, "params": params, "accuracy": accuracy, "loss": loss}
