"""prune: dependency-graph channel removal -> models/pruned.pt, the step records and the per-layer table."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruning.config import Config, PruneConfig
from pruning.depth import prune_depth
from pruning.errors import ConfigError, GraphTraceError
from pruning.importance import make_importance, prepare_importance
from pruning.latency import Allocation, allocate
from pruning.latency_table import LatencyTable, measure_pruned, profile_pruned, pruned_macs
from pruning.schedule import CALIBRATION_BATCH, run_schedule, search_ratio
from pruning.stages.common import Data, load_data, provenance, write_json
from pruning.surgery import channel_table, clone, count_macs, example_input, ignored_modules, load_model, save_model
from pruning.train import evaluate

log = logging.getLogger(__name__)


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
    allocation = None
    if p.allocation == "latency":
        allocation = _allocate_by_latency(model, data, cfg, dense_macs)
        ratio = allocation.report["channel_ratio"]
    elif p.ratio is not None:
        ratio = p.ratio
    else:
        ratio = search_ratio(model, data.input_shape, p, p.target_macs_reduction, data.train, cfg.seed,
                             reference_macs=dense_macs)
    before = channel_table(dense)
    result = run_schedule(model, data.input_shape, p, ratio, data.train, data.test, cfg.seed,
                          ratio_dict=allocation.ratios if allocation else None)
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
    if allocation is None:  # the table is a persistent DVC out: it exists (empty) whichever allocation ran
        LatencyTable.load(cfg.paths.latency_table, p.latency_batch_size, p.latency_threads).save(cfg.paths.latency_table)
    write_json(cfg.paths.prune_report, {**out.__dict__, "criterion": p.criterion, "scope": p.scope,
                                        "iterative_steps": p.iterative_steps, "pruned_params": pruned_params,
                                        "removed_blocks": removed, "allocation": p.allocation,
                                        "latency_allocation": allocation.report if allocation else None,
                                        "layers": layers})
    return out


def _allocate_by_latency(model: nn.Module, data: Data, cfg: Config, dense_macs: int) -> Allocation:
    """Channels per group by measured ORT latency (pruning/latency.py), with the table kept in paths.latency_table."""
    p = cfg.prune
    step = p.round_to or 8
    table = LatencyTable.load(cfg.paths.latency_table, p.latency_batch_size, p.latency_threads)
    imp = make_importance(p.criterion, p.oracle_max_channels, p.oracle_max_seconds)
    prepare_importance(imp, model, data.train.x, data.train.y, p.calibration_batches, CALIBRATION_BATCH, cfg.seed)
    ignored = ignored_modules(model, p.ignored_layers)
    shape, batch, threads = data.input_shape, p.latency_batch_size, p.latency_threads
    # the MACs target is the dense model's, also after depth pruning (as search_ratio's reference_macs)
    target_macs = None if p.target_macs_reduction is None else p.target_macs_reduction * count_macs(model, shape)[0] \
        / dense_macs
    try:
        allocation = allocate(
            model, shape, imp, ignored, table, step=step, max_layer_ratio=p.max_layer_ratio,
            target_macs_reduction=target_macs, target_speedup=p.target_speedup,
            measure=lambda ratios: measure_pruned(model, shape, ratios, p.ignored_layers, batch, threads,
                                                  cfg.export.opset),
            count_macs=lambda ratios: pruned_macs(model, shape, ratios, p.ignored_layers),
            profile=lambda ratios: profile_pruned(model, shape, ratios, p.ignored_layers, batch, threads,
                                                  cfg.export.opset))
    except ValueError as exc:
        target = "target_speedup" if p.target_speedup else "target_macs_reduction"
        raise ConfigError(f'Invalid "prune.{target}": {exc}') from None
    finally:
        table.save(cfg.paths.latency_table)  # what was measured is kept even if the target was out of reach
    model.zero_grad(set_to_none=True)
    kept = sum(k for _, k in allocation.keep.values())
    total = sum(c for c, _ in allocation.keep.values())
    allocation.report.update({"channel_ratio": 1 - kept / total, "keep": allocation.keep})
    log.info("latency allocation: %d groups, %.2fx MACs, table %d entries (%d measured in %.1f s)",
             len(allocation.keep), allocation.report["macs_reduction"], len(table.entries), table.measured,
             table.seconds)
    return allocation


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
