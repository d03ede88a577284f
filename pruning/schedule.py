"""Pruning schedules: one-shot (``iterative_steps: 1``) or iterative with fine-tuning between steps, and the search for
the channel ratio that reaches a MACs-reduction target.

Each step: gradients for the criterion (if it needs them) -> ``pruner.step()`` -> BatchNorm recalibration ->
optional fine-tuning; then MACs, params and test accuracy are recorded for the step plot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pruning import surgery
from pruning.errors import GraphTraceError
from pruning.importance import make_importance, prepare_importance
from pruning.train import Optim, evaluate, fit, recalibrate_batchnorm

if TYPE_CHECKING:
    from pruning.config import PruneConfig

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 64
MAX_SEARCH_RATIO = 0.95


@dataclass
class Split:
    """Tensors of one data split."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass
class ScheduleResult:
    """What a schedule produced: the pruned model (modified in place), its history and one record per step."""

    model: nn.Module
    ratio: float
    history: list = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)


def cubic_scheduler(pruning_ratio: float, steps: int) -> list[float]:
    """Gradual pruning's polynomial schedule (Zhu & Gupta 2017, eq. 1 with s_i = 0, exponent 3).

    ratio_t = ratio * (1 - (1 - t / steps)^3) for t = 0..steps: most channels go early, while the network still has
    the capacity to recover, and few at the end. Same contract as torch-pruning's ``linear_scheduler``.
    """
    return [pruning_ratio * (1 - (1 - t / steps) ** 3) for t in range(steps + 1)]


def _pruner(model: nn.Module, input_shape: tuple[int, ...], cfg: PruneConfig, ratio: float, steps: int,
            criterion: str | None = None, ratio_dict: dict[nn.Module, float] | None = None):
    imp = make_importance(criterion or cfg.criterion, cfg.oracle_max_channels, cfg.oracle_max_seconds)
    pruner = surgery.build_pruner(
        model, input_shape, imp, ratio=0.0 if ratio_dict else ratio, scope=cfg.scope, iterative_steps=steps,
        # an allocation's counts are final (already multiples of round_to): rounding again could only move them
        round_to=None if ratio_dict else cfg.round_to, max_layer_ratio=1.0 if ratio_dict else cfg.max_layer_ratio,
        ignored=surgery.ignored_modules(model, cfg.ignored_layers),
        scheduler=cubic_scheduler if cfg.schedule == "cubic" else None, ratio_dict=ratio_dict)
    return pruner, imp


def _step(pruner, imp, model: nn.Module, train: Split, cfg: PruneConfig, seed: int) -> None:
    prepare_importance(imp, model, train.x, train.y, cfg.calibration_batches, CALIBRATION_BATCH, seed)
    surgery.prune_step(pruner, model)
    model.zero_grad(set_to_none=True)  # stale gradients would have the pre-pruning shapes
    if cfg.bn_recalibration:
        recalibrate_batchnorm(model, train.x, cfg.calibration_batches, CALIBRATION_BATCH, seed)


def macs_after(model: nn.Module, input_shape: tuple[int, ...], cfg: PruneConfig, ratio: float, train: Split,
               seed: int) -> int:
    """MACs of a one-shot pruned copy of ``model`` at channel ratio ``ratio`` (the model is untouched).

    With uniform scope every layer keeps the same count whatever the criterion, so the trial uses cheap l1 (the
    loss_change oracle would cost a full pass per trial); with global scope the criterion decides the allocation.
    """
    trial = surgery.clone(model)
    pruner, imp = _pruner(trial, input_shape, cfg, ratio, 1, criterion="l1" if cfg.scope == "uniform" else None)
    torch.manual_seed(seed)
    prepare_importance(imp, trial, train.x, train.y, cfg.calibration_batches, CALIBRATION_BATCH, seed)
    surgery.prune_step(pruner, trial)
    return surgery.count_macs(trial, input_shape)[0]


def search_ratio(model: nn.Module, input_shape: tuple[int, ...], cfg: PruneConfig, target: float, train: Split,
                 seed: int, iterations: int = 12, reference_macs: int | None = None) -> float:
    """Smallest channel ratio whose one-shot pruned model reaches ``reference MACs / pruned MACs >= target``.

    Bisection; ``reference_macs`` is the dense model's (default: ``model``'s own, i.e. when no blocks were removed
    first). A ratio that would empty a layer counts as "too far", so the search stays inside what can be pruned.
    """
    dense_macs = reference_macs or surgery.count_macs(model, input_shape)[0]

    def reduction(ratio: float) -> float | None:
        try:
            return dense_macs / macs_after(model, input_shape, cfg, ratio, train, seed)
        except GraphTraceError:
            return None

    lo, hi = 0.0, MAX_SEARCH_RATIO
    for _ in range(iterations):
        mid = (lo + hi) / 2
        reached = reduction(mid)
        if reached is None or reached >= target:
            hi = mid
        else:
            lo = mid
    reached = reduction(hi)
    if reached is None or reached < target:
        best = reduction(lo)
        raise GraphTraceError(
            f'Invalid "prune.target_macs_reduction": {target} is out of reach (at most {best or 1.0:.2f}x, at ratio '
            f"{lo:.3f}, before a layer would lose every channel; ignored layers keep their MACs)")
    log.info("ratio %.4f reaches %.2fx MACs reduction (target %.2fx)", hi, reached, target)
    return hi


def _record(step: int, ratio: float, model: nn.Module, input_shape: tuple[int, ...], test: Split) -> dict[str, Any]:
    macs, params = surgery.count_macs(model, input_shape)
    accuracy, loss = evaluate(model, test.x, test.y)
    return {"step": step, "ratio": ratio, "macs": macs, "params": params, "accuracy": accuracy, "loss": loss}


def run_schedule(model: nn.Module, input_shape: tuple[int, ...], cfg: PruneConfig, ratio: float, train: Split,
                 test: Split, seed: int, ratio_dict: dict[nn.Module, float] | None = None) -> ScheduleResult:
    """Prune ``model`` in place to channel ratio ``ratio`` over ``cfg.iterative_steps`` steps.

    The scheduler spreads the ratio: with ``linear`` step i removes up to ``i / N * ratio`` of the original channels,
    with ``cubic`` (gradual pruning) most of it in the first steps. ``ratio_dict`` (a latency allocation's per-group
    ratios) replaces ``ratio``; ``ratio`` is then only what the step records report.
    Fine-tuning (``cfg.step_finetune_epochs``) runs between steps, not after the last one: that is the finetune stage.
    """
    torch.manual_seed(seed)
    pruner, imp = _pruner(model, input_shape, cfg, ratio, cfg.iterative_steps, ratio_dict=ratio_dict)
    result = ScheduleResult(model=model, ratio=ratio, steps=[_record(0, 0.0, model, input_shape, test)])
    for step in range(1, cfg.iterative_steps + 1):
        _step(pruner, imp, model, train, cfg, seed + step)
        if cfg.step_finetune_epochs and step < cfg.iterative_steps:
            opt = Optim(cfg.step_finetune_epochs, CALIBRATION_BATCH, cfg.step_lr)
            fit(model, train.x, train.y, opt, seed + step, f"prune step {step} fine-tune")
        step_ratio = ratio * step / cfg.iterative_steps if ratio_dict else pruner.per_step_pruning_ratio[step]
        result.steps.append(_record(step, step_ratio, model, input_shape, test))
        log.info("prune step %d/%d: %s", step, cfg.iterative_steps, result.steps[-1])
    result.history = pruner.pruning_history()
    return result
