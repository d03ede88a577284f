"""Lottery tickets: iterative magnitude pruning (IMP) with weight rewinding.

Frankle & Carbin (2019), "The Lottery Ticket Hypothesis": train, prune the smallest-|w| weights, reset the survivors
to their initial values and retrain; repeat. Frankle et al. (2020), "Linear Mode Connectivity and the Lottery Ticket
Hypothesis": on deeper networks, rewind to the weights of an early training iteration k instead of the
initialisation. ``reinit`` is Frankle & Carbin's control: survivors are randomly re-initialised (a fresh draw each
round) instead of rewound, which should train worse if the rewound values matter. Here the whole loop runs that
way, so the later rounds' masks come from re-initialised training, not from the rewound run's.

Masks are cumulative (round r removes ``prune_per_round`` of the weights left, so sparsity is 1 - (1 - p)^r) and
enforced by ``torch.nn.utils.prune``'s forward pre-hooks during retraining.

In the pipeline, with ``rewind_epoch: 0`` the first mask comes from the train stage's dense model and the survivors
rewind to the initialisation that model started from (rebuilt from the architecture and the seed). A later rewind
point needs the weights after k epochs of that run, which the train stage does not keep: the method then trains its
own dense run from the same initialisation for ``epochs`` and snapshots it at epoch k (a training callback).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.utils.data import Dataset

from pruning.checkpoint import mask_edit
from pruning.methods.base import Context, Outcome, step_record
from pruning.methods.unstructured import magnitude_prune, make_permanent, masked_layers, weight_sparsity
from pruning.schema import Section
from pruning.task import CLASSIFICATION, Task
from pruning.training import Callback, Optim, evaluate, fit, steps_per_epoch

log = logging.getLogger(__name__)


class Config(Section):
    """One IMP run: ``rounds`` rounds, each pruning ``prune_per_round`` of the remaining weights and retraining."""

    method: Literal["lottery"] = "lottery"
    rounds: int = Field(5, ge=1, le=100, description="pruning rounds; sparsity after r rounds is 1 - (1 - prune_per_round)^r")
    prune_per_round: float = Field(0.2, gt=0, lt=1, description="share of the remaining weights removed per round "
                                   "(Frankle & Carbin use 0.2)")
    epochs: int = Field(10, ge=1, le=10_000, description="training epochs per round (and of the dense run, for a later rewind)")
    rewind_epoch: int = Field(0, ge=0, le=10_000, description="0: rewind to the initialisation; k: to the weights after k "
                              "epochs of a dense run")
    batch_size: int = Field(64, ge=2, le=65_536, description="training batch size")
    lr: float = Field(0.05, gt=0, le=10, description="learning rate (cosine schedule)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="weight decay")
    scope: Literal["global", "layer"] = Field("global", description="global: one magnitude ranking over all layers | "
                                              "layer: each layer its share")
    reinit: bool = Field(False, description="control: random re-initialisation instead of rewinding")

    @model_validator(mode="after")
    def _rewind_inside(self) -> Config:
        if self.rewind_epoch >= self.epochs:
            raise ValueError(f"rewind_epoch {self.rewind_epoch} must be below epochs ({self.epochs})")
        return self

    def sparsity_after(self, round_: int) -> float:
        """Target share of pruned weights after ``round_`` rounds: 1 - (1 - p)^round."""
        return 1.0 - (1.0 - self.prune_per_round) ** round_


@dataclass(frozen=True)
class LotteryResult:
    """The final ticket (masks made permanent), the dense baseline and one record per round.

    ``rounds``: ``{"round", "sparsity" (measured), "accuracy", "loss"}`` on the test split. ``rewind_state`` is the
    state dict every round's survivors were reset to (unused by the ``reinit`` control).
    """

    model: nn.Module
    dense_accuracy: float
    rounds: list[dict[str, float]] = field(default_factory=list)
    rewind_state: dict[str, Tensor] = field(default_factory=dict)


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Snapshot(Callback):
    """Keeps the model's state after optimizer step ``at`` (the rewind point)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.state: dict[str, Tensor] = {}

    def on_step(self, model: nn.Module, step: int) -> None:
        if step == self.at:
            self.state = _snapshot(model)


def _dense_run(model: nn.Module, train: Dataset, opt: Optim, rewind_steps: int, seed: int,
               device: str, task: Task = CLASSIFICATION) -> dict[str, Tensor]:
    """Train the dense model for ``opt.epochs`` and return its state after ``rewind_steps`` SGD steps.

    The rewind point lies inside one run with one learning-rate schedule (Frankle et al. 2020), not at the end of a
    separate warm-up run.
    """
    if rewind_steps == 0:
        state = _snapshot(model)
        fit(model, train, opt, seed=seed, desc="lottery dense", device=device, task=task)
        return state
    snap = _Snapshot(rewind_steps)
    fit(model, train, opt, seed=seed, desc="lottery dense", callbacks=[snap], device=device, task=task)
    assert snap.state, f"no rewind snapshot (wanted step {rewind_steps})"
    return snap.state


def _load_survivors(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a dense state dict into a pruned model, keeping its masks.

    A pruned weight lives in ``<name>_orig`` (the forward uses ``_orig * _mask``), so only the survivors take the new
    values. Everything else — biases, BatchNorm affine and running statistics — is loaded as it is.
    """
    current = model.state_dict()
    renamed = {(k + "_orig" if k + "_orig" in current else k): v for k, v in state.items()}
    renamed.update({k: v for k, v in current.items() if k.endswith("_mask")})
    model.load_state_dict(renamed)


def find_ticket(build: Callable[[], nn.Module], train: Dataset, test: Dataset, cfg: Config, seed: int,
                trained: nn.Module | None = None, device: str = "cpu", task: Task = CLASSIFICATION) -> LotteryResult:
    """Iterative magnitude pruning with rewinding; see the module docstring.

    Args:
        build: returns a freshly initialised dense model (called under ``torch.manual_seed(seed)``).
        train: used for training; test: only reported.
        cfg: rounds, pruning rate, schedule, scope, rewind point, reinit control.
        seed: seeds the initialisation, the batch order and the ``reinit`` draws.
        trained: a dense model already trained from ``build``'s initialisation; with ``rewind_epoch`` 0 it gives the
            first mask and no dense run is needed.

    Returns:
        The pruned model (masks permanent), dense test accuracy and one record per round.
    """
    torch.manual_seed(seed)
    model = build()
    dense_opt = Optim(cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay)
    if trained is not None and cfg.rewind_epoch == 0:
        rewind_state = _snapshot(model)
        model = trained
    else:
        steps = steps_per_epoch(len(train), cfg.batch_size)  # type: ignore[arg-type]
        rewind_state = _dense_run(model, train, dense_opt, cfg.rewind_epoch * steps, seed, device, task)
    dense_accuracy, dense_loss = evaluate(model, test, device=device, task=task)
    log.info("lottery dense: accuracy %.4f loss %.4f", dense_accuracy, dense_loss)

    # fit() restarts its cosine schedule at opt.lr; starting it at the dense run's learning rate at the rewind step
    # (lr/2 * (1 + cos(pi * k / T))) approximates continuing the original schedule, as Frankle et al. (2020) do
    progress = cfg.rewind_epoch / cfg.epochs
    retrain = Optim(cfg.epochs - cfg.rewind_epoch, cfg.batch_size, cfg.lr * (1 + math.cos(math.pi * progress)) / 2,
                    cfg.momentum, cfg.weight_decay)
    records: list[dict[str, float]] = []
    for r in range(1, cfg.rounds + 1):
        magnitude_prune(model, cfg.sparsity_after(r), cfg.scope)
        if cfg.reinit:
            torch.manual_seed(seed + 10_000 + r)  # a fresh draw per round, never the rewind weights
            start = _snapshot(build())
        else:
            start = rewind_state
        _load_survivors(model, start)
        fit(model, train, retrain, seed=seed, desc=f"lottery round {r}/{cfg.rounds}", device=device, task=task)
        accuracy, loss = evaluate(model, test, device=device, task=task)
        records.append({"round": r, "sparsity": weight_sparsity(model), "accuracy": accuracy, "loss": loss})
        log.info("lottery round %d: sparsity %.4f accuracy %.4f loss %.4f", r, records[-1]["sparsity"], accuracy, loss)
    make_permanent(model)
    return LotteryResult(model=model, dense_accuracy=dense_accuracy, rounds=records, rewind_state=rewind_state)


def apply(model: nn.Module, cfg: Config, ctx: Context) -> Outcome:
    """IMP from the train stage's dense model (see the module docstring); one step record per round."""
    data = ctx.data
    dense = step_record(0, 0.0, model, ctx)
    result = find_ticket(ctx.build, data.train, data.test, cfg, ctx.seed, trained=model, device=ctx.device,
                         task=ctx.task)
    ticket = result.model
    # zeros in dense layers: MACs and params (torch-pruning's count) stay the dense model's
    steps = [dense] + [{"step": r["round"], "ratio": r["sparsity"], "macs": dense["macs"], "params": dense["params"],
                        "accuracy": r["accuracy"], "loss": r["loss"]} for r in result.rounds]
    report = {"dense_accuracy": result.dense_accuracy, "rounds": result.rounds, "rewind_epoch": cfg.rewind_epoch,
              "weight_sparsity": weight_sparsity(ticket)}
    return Outcome(ticket, [mask_edit(masked_layers(ticket))], steps, report)
