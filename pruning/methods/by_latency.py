"""The channel method's latency allocation: the table, the importance and the yardstick set up for a CNN (channels
per dependency group, :mod:`pruning.allocation.latency`) or a transformer (heads, MLP width and layers alike in every
layer, :mod:`pruning.allocation.transformer`). Kept apart from :mod:`pruning.methods.channel`, which only applies
what these choose (``cfg`` is its Config: typed loosely, since channel imports this module)."""

from __future__ import annotations

import logging
from typing import Any

import torch_pruning as tp
from torch import nn

from pruning import criteria, dependency, layers
from pruning.allocation import transformer as tf
from pruning.allocation.latency import Allocation, allocate
from pruning.allocation.latency_table import LatencyTable, Yardstick
from pruning.counting import count_macs
from pruning.data import at_length, calibration_sample, take
from pruning.errors import PruningError
from pruning.methods import depth
from pruning.methods.base import Context

log = logging.getLogger(__name__)


def cnn(model: nn.Module, cfg: Any, ctx: Context, dense_macs: int) -> Allocation:
    """Channels per group by measured ORT latency (:mod:`pruning.allocation.latency`), with the table kept in
    ``ctx.latency_table``."""
    shape, batch, threads = ctx.data.input_shape, cfg.latency_batch_size, cfg.latency_threads
    if shape is None:
        raise PruningError("latency allocation times single-input models and transformers (it exports candidates "
                           "from an input shape); this model takes several inputs: use allocation macs",
                           field="allocation")
    table = LatencyTable.load(ctx.latency_table, batch, threads)
    imp = criteria.make(cfg.criterion, cfg.limits)
    criteria.prepare(cfg.criterion, imp, model, ctx.data.calibration_split, cfg.calibration_batches, ctx.seed,
                     ctx.task)
    ignored = dependency.ignored_modules(model, cfg.ignored_layers)
    # the MACs target is the dense model's, also after depth pruning (as search_ratio's reference)
    target_macs = None if cfg.target_macs_reduction is None else \
        cfg.target_macs_reduction * count_macs(model, shape)[0] / dense_macs
    yardstick = Yardstick(model, shape, cfg.ignored_layers, batch, threads, ctx.opset)
    try:
        allocation = allocate(
            model, shape, imp, ignored, table, step=cfg.round_to or 8, max_layer_ratio=cfg.max_layer_ratio,
            target_macs_reduction=target_macs, target_speedup=cfg.target_speedup,
            measure=yardstick.speedup, count_macs=yardstick.macs, profile=yardstick.profile)
    finally:
        table.save(ctx.latency_table)  # what was measured is kept even if the target was out of reach
    model.zero_grad(set_to_none=True)
    kept = sum(k for _, k in allocation.keep.values())
    total = sum(c for c, _ in allocation.keep.values())
    allocation.report.update({"channel_ratio": 1 - kept / total, "keep": allocation.keep})
    log.info("latency allocation: %d groups, %.2fx MACs, table %d entries (%d measured in %.1f s)",
             len(allocation.keep), allocation.report["macs_reduction"], len(table.entries), table.measured,
             table.seconds)
    return allocation


def transformer(model: nn.Module, cfg: Any, ctx: Context, dense_macs: int) -> tuple[tf.Choice, dict[str, float]]:
    """Heads, MLP width and layers every layer keeps, by measured ORT latency at the latency batch and sequence
    length; (the choice, the layers' scores by ``depth_criterion``: which layers go)."""
    if cfg.hidden is True:  # "auto" keeps it here: hf.rebuilds then says whether save_pretrained reloads the model
        raise PruningError("latency allocation keeps a transformer's hidden size: set hidden to auto or false",
                           field="hidden")
    batch, threads, spec = cfg.latency_batch_size, cfg.latency_threads, ctx.data.spec
    split = ctx.data.calibration_split
    x = take(split, [i % len(split) for i in range(batch)]).x  # type: ignore[arg-type]
    if cfg.latency_sequence_length:
        x = at_length(x, cfg.latency_sequence_length)
    probe, _ = dependency.build_pruner(model, spec, tp.importance.GroupMagnitudeImportance(p=1), ratio=0.0,
                                       scope="uniform", iterative_steps=1, round_to=None, max_layer_ratio=1.0,
                                       ignored=dependency.ignored_modules(model, cfg.ignored_layers))
    sample = calibration_sample(split, cfg.calibration_batches, ctx.seed)
    scores: dict[str, float] = {}
    if cfg.latency_layers and len(layers.find(model)) > 1:
        scores = depth.layer_scores(model, sample, cfg.depth_criterion, ctx.task.loss)
    lay = tf.layout(model, probe)

    def prune(trial: nn.Module, counts: tf.Counts) -> None:  # a candidate: l1 picks the heads and channels
        pick = tf.choice(lay, counts)
        if pick.drop:
            layers.remove(trial, depth.lowest(scores, pick.drop))
        if pick.head_ratio > 0 or pick.mlp_ratio > 0:
            pruner, _ = dependency.build_pruner(
                trial, spec, tp.importance.GroupMagnitudeImportance(p=1), ratio=pick.mlp_ratio, scope="uniform",
                iterative_steps=1, round_to=cfg.round_to, max_layer_ratio=cfg.max_layer_ratio,
                ignored=dependency.ignored_modules(trial, cfg.ignored_layers), head_ratio=pick.head_ratio)
            dependency.prune_step(pruner, trial)

    table = LatencyTable.load(ctx.latency_table, batch, threads)
    target_macs = None if cfg.target_macs_reduction is None else \
        cfg.target_macs_reduction * count_macs(model, spec)[0] / dense_macs
    try:
        yardstick = tf.TokenYardstick(model, spec, x, prune, lambda m: depth.mean_loss(m, sample, ctx.task.loss),
                                      threads, ctx.opset)
        choice = tf.allocate(model, x, lay, len(scores), table, yardstick, step=cfg.round_to or 8,
                             max_layer_ratio=cfg.max_layer_ratio, target_macs_reduction=target_macs,
                             target_speedup=cfg.target_speedup)
    finally:
        table.save(ctx.latency_table)
    model.zero_grad(set_to_none=True)
    log.info("latency allocation: every layer keeps %s (%.2fx MACs estimated), table %d entries (%d measured in "
             "%.1f s)", ", ".join(f"{v} {k}" for k, v in choice.counts.items()), choice.report["macs_reduction"],
             len(table.entries), table.measured, table.seconds)
    return choice, scores
