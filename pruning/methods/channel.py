"""Channel pruning: remove channels/filters over torch-pruning's dependency graph (structured pruning).

Coupled layers (a residual add's inputs, a depthwise convolution and its producer, BatchNorm) lose the same channels,
so the pruned network is a smaller dense network that runs faster on any runtime. The method composes:

1. optional depth pruning first (``depth_blocks``: whole residual blocks become their shortcuts, :mod:`.depth`);
2. an allocation — how many channels each group loses: one ``ratio`` for every group (``scope: uniform``) or one
   ranking across groups (``global``), a ratio searched for a MACs target (:mod:`pruning.allocation.uniform`), or
   channel counts chosen by measured ONNX Runtime latency (``allocation: latency``, :mod:`pruning.allocation.latency`);
3. a schedule: one-shot, or ``iterative_steps`` steps with a linear or cubic (Zhu & Gupta 2017) ratio schedule and
   fine-tuning between steps; a criterion (:mod:`pruning.criteria`) picks which channels go at each step, and
   BatchNorm statistics are re-estimated after each step.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Literal

import torch
import torch_pruning as tp
from pydantic import Field, model_validator
from torch import nn
from torch.utils.data import Dataset
from torch_pruning.pruner.algorithms.scheduler import linear_scheduler

from pruning import attention, criteria, dependency, kv_groups, layers
from pruning.allocation.uniform import search_ratio
from pruning.checkpoint import Edit, channels_edit, layers_edit
from pruning.counting import count_macs, example_input
from pruning.data import calibration_sample
from pruning.distributed import fit
from pruning.errors import GraphTraceError, PruningError
from pruning.methods import by_latency, depth
from pruning.methods.base import Context, Outcome, describe_step, step_record
from pruning.schema import Section
from pruning.training import OPTIMIZERS, Optim, recalibrate_batchnorm

log = logging.getLogger(__name__)

STEP_FINETUNE_BATCH = 64  # batch size of the fine-tuning between iterative steps


class Config(Section):
    """Remove channels/filters over torch-pruning's dependency graph: the pruned model is a smaller dense one.

    ``allocation: macs``: exactly one of ``ratio`` and ``target_macs_reduction``. ``allocation: latency``: exactly one
    of ``target_speedup`` (measured) and ``target_macs_reduction``; ``ratio`` null, ``scope`` uniform.
    """

    method: Literal["channel"] = "channel"
    criterion: criteria.CriterionName = Field("l2", description="which channels go: l1 | l2 (group magnitude) | taylor "
                                              "| hessian | bn_scale | lamp | random | loss_change (measured oracle)")
    scope: Literal["uniform", "global"] = Field("uniform", description="uniform: every group loses the same share | "
                                                "global: one ranking across groups")
    allocation: Literal["macs", "latency"] = Field("macs", description="macs: by ratio / MACs target | latency: "
                                                   "channels per group by measured ONNX Runtime time")
    ratio: float | None = Field(0.35, gt=0, lt=1, description="share of channels removed per group (macs only)")
    target_macs_reduction: float | None = Field(None, gt=1, le=1_000, description="instead of ratio: dense / pruned MACs to "
                                                "reach, e.g. 2.0 (the ratio is searched; with latency: its target)")
    target_speedup: float | None = Field(None, gt=1, le=1_000, description="latency only: measured dense / pruned latency")
    latency_batch_size: int = Field(1, ge=1, le=65_536, description="latency only: batch size the latency table is measured at")
    latency_threads: int = Field(1, ge=1, le=256, description="latency only: ORT threads of the latency table")
    latency_sequence_length: int | None = Field(None, ge=1, le=1_000_000, description="latency only, transformers: "
                                                "tokens the candidates are timed at (null: the data's own)")
    kv_groups: bool = Field(False, description="grouped-query attention: remove whole key/value groups (a key/value "
                            "head with its query heads), not query heads within every group; by the same ratio")
    latency_layers: bool = Field(False, description="latency only, transformers: whole layers are a knob too, weighed "
                                 "against heads and MLP channels by the loss they add (off: depth_blocks drops layers)")
    iterative_steps: int = Field(1, ge=1, le=1_000, description="1 = one-shot; N = reach the ratio in N steps")
    schedule: Literal["linear", "cubic"] = Field("linear", description="with N steps: linear | cubic (gradual: most "
                                                 "of the ratio in the first steps)")
    step_finetune_epochs: int = Field(2, ge=0, le=10_000, description="fine-tuning epochs between iterative steps")
    step_lr: float = Field(0.01, gt=0, le=10, description="their learning rate")
    step_optimizer: Literal[OPTIMIZERS] = Field("sgd", description="their optimizer: sgd | adamw (transformers)")
    round_to: int | None = Field(8, ge=1, le=4_096, description="channel counts stay multiples of this; latency allocation's "
                                 "step")
    max_layer_ratio: float = Field(0.9, gt=0, le=1, description="no group loses more than this share")
    ignored_layers: list[str] = Field(default_factory=list, description="module names never pruned (the classifier "
                                      "always is kept)")
    calibration_batches: int = Field(4, ge=1, le=100_000, description="batches of 64 for gradient criteria and BatchNorm "
                                     "recalibration")
    bn_recalibration: bool = Field(True, description="re-estimate BatchNorm statistics after each step")
    hidden: bool | Literal["auto"] = Field("auto", description="transformers: true = prune the hidden size too (the "
                                           "residual stream: embeddings, every layer's input and output projections, "
                                           "norms), by the same ratio | false = keep it | auto = keep it, except where "
                                           "the model's class derives its head size from it (BERT): it then follows "
                                           "the heads, so that save_pretrained reloads the model")
    depth_blocks: int = Field(0, ge=0, le=100_000, description="remove this many residual blocks (each becomes its "
                              "shortcut) or transformer layers first; a MACs target stays relative to the dense model")
    depth_criterion: depth.BlockCriterion = Field("loss_change", description="how those blocks are ranked "
                                                  "(loss_change | norm | block_influence)")
    oracle_max_channels: int = Field(criteria.Limits.max_channels, ge=1, le=10_000_000,
                                     description="loss_change: loss evaluations allowed per step")
    oracle_max_seconds: float = Field(criteria.Limits.max_seconds, gt=0, le=86_400,
                                      description="loss_change: seconds allowed per step")

    @model_validator(mode="after")
    def _one_target(self) -> Config:
        if self.allocation == "latency":
            if self.ratio is not None:
                raise ValueError("allocation latency chooses each group's ratio: set ratio to null")
            if (self.target_speedup is None) == (self.target_macs_reduction is None):
                raise ValueError("allocation latency: set exactly one of target_speedup and target_macs_reduction "
                                 "(the other to null)")
            if self.scope != "uniform":
                raise ValueError("allocation latency ranks groups itself: scope must be uniform")
            if self.kv_groups:
                raise ValueError("allocation latency prices query heads, not key/value groups: set kv_groups to false")
        else:
            if self.target_speedup is not None:
                raise ValueError("target_speedup needs allocation: latency")
            if (self.ratio is None) == (self.target_macs_reduction is None):
                raise ValueError("set exactly one of ratio and target_macs_reduction (the other to null)")
        return self

    @property
    def limits(self) -> criteria.Limits:
        return criteria.Limits(self.oracle_max_channels, self.oracle_max_seconds)


def cubic_scheduler(pruning_ratio: float, steps: int) -> list[float]:
    """Gradual pruning's polynomial schedule (Zhu & Gupta 2017, eq. 1 with s_i = 0, exponent 3).

    ratio_t = ratio * (1 - (1 - t / steps)^3) for t = 0..steps: most channels go early, while the network still has
    the capacity to recover, and few at the end. Same contract as torch-pruning's ``linear_scheduler``.
    """
    return [pruning_ratio * (1 - (1 - t / steps) ** 3) for t in range(steps + 1)]


def _pruner(model: nn.Module, shape: tuple[int, ...], cfg: Config, ratio: float, steps: int,
            criterion: str | None = None, ratio_dict: dict[nn.Module, float] | None = None,
            head_ratio: float | None = None) -> tuple[tp.pruner.BasePruner, tp.importance.Importance, dependency.Plan | None]:
    imp = criteria.make(criterion or cfg.criterion, cfg.limits)
    pruner, plan = dependency.build_pruner(
        model, shape, imp, ratio=0.0 if ratio_dict else ratio, scope=cfg.scope, iterative_steps=steps,
        # an allocation's counts are final (already multiples of round_to): rounding again could only move them
        round_to=None if ratio_dict else cfg.round_to, max_layer_ratio=1.0 if ratio_dict else cfg.max_layer_ratio,
        ignored=dependency.ignored_modules(model, cfg.ignored_layers),
        scheduler=cubic_scheduler if cfg.schedule == "cubic" else None, ratio_dict=ratio_dict,
        # latency allocation priced its candidates with the hidden size kept: "auto" keeps it there too
        hidden=cfg.hidden if cfg.allocation == "macs" else cfg.hidden is True, head_ratio=head_ratio)
    return pruner, imp, plan


def macs_after(model: nn.Module, shape: Any, cfg: Config, ratio: float, train: Dataset, seed: int,
               head_ratio: float | None = None) -> int:
    """MACs of a one-shot pruned copy of ``model`` at channel ratio ``ratio`` (the model is untouched; attention heads
    at ``head_ratio`` where given).

    With uniform scope every layer keeps the same count whatever the criterion, so the trial uses cheap l1 (the
    loss_change oracle would cost a full pass per trial); with global scope the criterion decides the allocation.
    """
    trial = copy.deepcopy(model)
    criterion = "l1" if cfg.scope == "uniform" else cfg.criterion
    if cfg.kv_groups:
        head_ratio = _remove_kv_groups(trial, cfg, ratio, shape)[2]
    pruner, imp, _ = _pruner(trial, shape, cfg, ratio, 1, criterion=criterion, head_ratio=head_ratio)
    torch.manual_seed(seed)
    criteria.prepare(criterion, imp, trial, train, cfg.calibration_batches, seed)
    dependency.prune_step(pruner, trial)
    return count_macs(trial, shape)[0]


def _fewer_heads(model: nn.Module, cfg: Config, ratio: float, ctx: Context, dense_macs: int
                 ) -> tuple[float | None, float | None]:
    """The ratio search's first ratio past a MACs target can be one that removes another whole head per layer: a big
    step on a model of few heads, bigger where a BERT's hidden size follows its heads (``hidden: auto``), so the target
    is passed far (4 heads: ÷3.4 for 2x). Then: one head fewer removed per layer and as many more MLP channels as the
    target needs, if that passes it by less than half as much; (head ratio, channel ratio), or (None, None) to keep
    ``ratio``."""
    attentions = attention.find(model)
    units = {a.heads // (a.kv_heads if a.kv_heads < a.heads else 1) for a in attentions}  # as attention.plan counts
    if len(units) != 1 or cfg.kv_groups or cfg.scope != "uniform":
        return None, None
    n = units.pop()
    removed = min(n - 1, round(ratio * n))
    if removed == 0:
        return None, None
    head_ratio, shape, split, seed = (removed - 1) / n, ctx.data.spec, ctx.data.calibration_split, ctx.seed
    try:
        closer = search_ratio(lambda r: macs_after(model, shape, cfg, r, split, seed, head_ratio), dense_macs,
                              cfg.target_macs_reduction)
    except GraphTraceError:  # out of reach with that head more kept
        return None, None
    first = dense_macs / macs_after(model, shape, cfg, ratio, split, seed)
    fewer = dense_macs / macs_after(model, shape, cfg, closer, split, seed, head_ratio)
    target = cfg.target_macs_reduction or 1.0
    if fewer - target >= (first - target) / 2:  # not markedly closer: the ratio search's structure stays
        return None, None
    log.info("MACs target: %d of %d heads removed per layer and channel ratio %.3f reach ÷%.2f (the ratio search's "
             "%.3f: %d heads, ÷%.2f)", removed - 1, n, closer, fewer, ratio, removed, first)
    return head_ratio, closer


def _remove_kv_groups(model: nn.Module, cfg: Config, ratio: float, spec: Any
                      ) -> tuple[dict[str, list[int]], list[str], float | None]:
    """``kv_groups``: whole key/value groups out, by ``ratio`` (:mod:`pruning.kv_groups`); (the groups removed, notes,
    the head ratio left for the schedule: none, the query heads went with their groups)."""
    if not kv_groups.grouped(model):
        return {}, ["kv_groups: no grouped-query attention here; query heads go as usual"], None
    removed, notes = kv_groups.plan(model, ratio, example_input(spec))
    kv_groups.remove(model, removed, example_input(spec))
    return removed, notes, 0.0


def run_schedule(model: nn.Module, cfg: Config, ratio: float, ctx: Context,
                 ratio_dict: dict[nn.Module, float] | None = None, head_ratio: float | None = None
                 ) -> tuple[dependency.History, list[dict[str, Any]], dependency.Plan | None]:
    """Prune ``model`` in place to channel ratio ``ratio`` over ``cfg.iterative_steps`` steps; (history, steps, the
    channel plan of a uniform ratio with round_to, else None).

    The scheduler spreads the ratio: with ``linear`` step i removes up to ``i / N * ratio`` of the original channels,
    with ``cubic`` (gradual pruning) most of it in the first steps. ``ratio_dict`` (a latency allocation's per-group
    ratios) replaces ``ratio``; ``ratio`` is then only what the step records report. ``head_ratio``: attention heads
    removed, when not ``ratio`` (a transformer's latency allocation).
    Fine-tuning (``cfg.step_finetune_epochs``) runs between steps, not after the last one: that is the finetune stage.
    """
    data, seed, device, task = ctx.data, ctx.seed, ctx.device, ctx.task
    torch.manual_seed(seed)
    n = cfg.iterative_steps
    pruner, imp, plan = _pruner(model, data.spec, cfg, ratio, n, ratio_dict=ratio_dict, head_ratio=head_ratio)
    steps = [step_record(0, 0.0, model, ctx)]
    scheduled = (cubic_scheduler if cfg.schedule == "cubic" else linear_scheduler)(ratio, n)
    for step in range(1, n + 1):
        criteria.prepare(cfg.criterion, imp, model, data.calibration_split, cfg.calibration_batches, seed + step, task)
        dependency.prune_step(pruner, model)
        model.zero_grad(set_to_none=True)  # stale gradients would have the pre-pruning shapes
        if cfg.bn_recalibration:
            recalibrate_batchnorm(model, data.calibration_split, cfg.calibration_batches, seed + step, device)
        if cfg.step_finetune_epochs and step < n:
            fit(ctx.ranks, model, data.train, Optim(cfg.step_finetune_epochs, STEP_FINETUNE_BATCH, cfg.step_lr,
                                                    optimizer=cfg.step_optimizer),
                seed + step, f"prune step {step} fine-tune", device=device, task=task)
        steps.append(step_record(step, scheduled[step], model, ctx))
        log.info("prune step %d/%d: %s", step, n, describe_step(steps[-1], steps[0], task.metric_name))
    return pruner.pruning_history(), steps, plan


def apply(model: nn.Module, cfg: Config, ctx: Context) -> Outcome:
    """Depth pruning (if asked), then an allocation, then the schedule."""
    data, shape = ctx.data, ctx.data.spec
    dense_macs, _ = count_macs(model, shape)
    widths = _widths(model)
    dense_step = step_record(0, 0.0, model, ctx) if cfg.depth_blocks else None
    removed: list[str] = []
    depth_edits: list[Edit] = []
    if cfg.depth_blocks:
        sample = calibration_sample(data.calibration_split, cfg.calibration_batches, ctx.seed)
        try:
            model, removed, edit = depth.prune_depth(model, sample, cfg.depth_blocks, cfg.depth_criterion, shape,
                                                     ctx.task.loss)
        except ValueError as exc:  # too many blocks, or none in this architecture
            raise PruningError(str(exc), field="depth_blocks") from None
        depth_edits += [edit] if edit else []
    allocation, head_ratio, allocation_report = None, None, None
    if cfg.allocation == "latency" and attention.find(model):  # heads, MLP width and layers, alike in every layer
        choice, scores = by_latency.transformer(model, cfg, ctx, dense_macs)
        if choice.drop:
            dropped = depth.lowest(scores, choice.drop)
            layers.remove(model, dropped)
            log.info("latency allocation: removed transformer layers %s", dropped)
            removed += dropped  # named as the model had them after depth_blocks: a second edit, replayed after it
            depth_edits.append(layers_edit(dropped))
        ratio, head_ratio, allocation_report = choice.mlp_ratio, choice.head_ratio, choice.report
    elif cfg.allocation == "latency":
        allocation = by_latency.cnn(model, cfg, ctx, dense_macs)
        ratio, allocation_report = allocation.report["channel_ratio"], allocation.report
    elif cfg.ratio is not None:
        ratio = cfg.ratio
    else:
        ratio = search_ratio(lambda r: macs_after(model, shape, cfg, r, data.calibration_split, ctx.seed),
                             dense_macs, cfg.target_macs_reduction)
        head_ratio, closer = _fewer_heads(model, cfg, ratio, ctx, dense_macs)
        ratio = closer or ratio
    kv_removed, kv_notes = {}, []
    if cfg.kv_groups:
        kv_removed, kv_notes, head_ratio = _remove_kv_groups(model, cfg, ratio, shape)
        depth_edits += [kv_groups.edit(kv_removed)] if kv_removed else []
        for note in kv_notes:
            log.info("key/value groups: %s", note)
    history, steps, plan = run_schedule(model, cfg, ratio, ctx, ratio_dict=allocation.ratios if allocation else None,
                                        head_ratio=head_ratio)
    for missed in attention.check_applied(model, plan.heads) if plan and plan.heads else []:
        log.warning("heads: %s", missed)
    # the share of channels actually removed: the plan's (over its groups) or, without one, over the layers' outputs
    achieved = plan.achieved if plan else _removed_share(widths, _widths(model))
    notes = (plan.notes() if plan else []) + kv_notes
    log.info("channel ratio: asked %.3f, achieved %.3f%s", ratio, achieved, "".join(f"; {n}" for n in notes))
    if dense_step is not None:  # the schedule's step 0 is the depth-pruned model: put the dense one before it
        steps = [dense_step] + [{**s, "step": s["step"] + 1} for s in steps]
    edits = depth_edits + [channels_edit(history)]
    report = {"ratio": ratio, "head_ratio": head_ratio, "achieved_ratio": achieved, "channel_plan": plan.rows if plan else None,
              "head_plan": plan.heads.rows if plan and plan.heads else None,
              "plan_notes": notes, "criterion": cfg.criterion, "scope": cfg.scope, "iterative_steps": cfg.iterative_steps,
              "removed_blocks": removed, "allocation": cfg.allocation,
              "latency_allocation": allocation_report, "kv_groups_removed": kv_removed or None}
    return Outcome(model, edits, steps, report)


def _widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution and linear layer but the classifier (whose outputs are never pruned)."""
    head = dependency.classifier_of(model)
    return {name: m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
            for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and m is not head}


def _removed_share(before: dict[str, int], after: dict[str, int]) -> float:
    """Share of ``before``'s output channels gone in ``after`` (layers of removed blocks count as gone)."""
    total = sum(before.values())
    return 1 - sum(after.get(n, 0) for n in before) / total if total else 0.0
