"""Lottery tickets: iterative magnitude pruning (IMP) with weight rewinding.

Frankle & Carbin (2019), "The Lottery Ticket Hypothesis": train, prune the smallest-|w| weights, reset the survivors
to their initial values and retrain; repeat. Frankle et al. (2020), "Linear Mode Connectivity and the Lottery Ticket
Hypothesis": on deeper networks, rewind to the weights of an early training iteration k instead of the
initialisation. ``reinit`` is Frankle & Carbin's control: survivors are randomly re-initialised (a fresh draw each
round) instead of rewound, which should train worse if the rewound values matter. Here the whole loop runs that
way, so the later rounds' masks come from re-initialised training, not from the rewound run's.

Masks are cumulative (round r removes ``prune_per_round`` of the weights left, so sparsity is 1 - (1 - p)^r) and
enforced by ``torch.nn.utils.prune``'s forward pre-hooks during retraining: :func:`pruning.train.fit` has no
per-step callback, and the hooks need none.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pruning.train import Optim, evaluate, fit
from pruning.unstructured import SCOPES, magnitude_prune, make_permanent, weight_sparsity

log = logging.getLogger(__name__)

Split = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class LotteryConfig:
    """One IMP run.

    ``prune_per_round`` is the share of the *remaining* weights removed each round (Frankle & Carbin use 0.2);
    ``rewind_epoch`` 0 rewinds to the original initialisation, k > 0 to the weights after k epochs of the dense run.
    """

    rounds: int
    prune_per_round: float = 0.2
    epochs: int = 10
    rewind_epoch: int = 0
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scope: str = "global"
    reinit: bool = False

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"Invalid rounds: {self.rounds} (must be >= 1)")
        if not 0 < self.prune_per_round < 1:
            raise ValueError(f"Invalid prune_per_round: {self.prune_per_round} (must be in (0, 1))")
        if self.epochs < 1:
            raise ValueError(f"Invalid epochs: {self.epochs} (must be >= 1)")
        if not 0 <= self.rewind_epoch < self.epochs:
            raise ValueError(f"Invalid rewind_epoch: {self.rewind_epoch} (must be in [0, epochs={self.epochs}))")
        if self.scope not in SCOPES:
            raise ValueError(f"Invalid scope: {self.scope!r} (must be one of {', '.join(SCOPES)})")

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


def _steps_per_epoch(n: int, batch_size: int) -> int:
    # mirrors fit(): it skips a trailing batch of one sample (BatchNorm cannot train on it)
    return n // batch_size + (1 if n % batch_size >= 2 else 0)


def _train_with_rewind_point(model: nn.Module, x: Tensor, y: Tensor, opt: Optim, rewind_steps: int,
                             seed: int) -> dict[str, Tensor]:
    """Train the dense model for ``opt.epochs`` and return its state after ``rewind_steps`` SGD steps.

    The snapshot is taken by a forward pre-hook at the start of step ``rewind_steps + 1``, so the rewind point lies
    inside one run with one learning-rate schedule (Frankle et al. 2020), not at the end of a separate warm-up run.
    """
    if rewind_steps == 0:
        state = _snapshot(model)
        fit(model, x, y, opt, seed=seed, desc="lottery dense")
        return state
    seen = {"steps": 0}
    found: dict[str, Tensor] = {}

    def hook(module: nn.Module, _inputs: tuple) -> None:
        if module.training:
            if seen["steps"] == rewind_steps:
                found.update(_snapshot(module))
            seen["steps"] += 1

    handle = model.register_forward_pre_hook(hook)
    try:
        fit(model, x, y, opt, seed=seed, desc="lottery dense")
    finally:
        handle.remove()
    assert found, f"no rewind snapshot after {seen['steps']} steps (wanted step {rewind_steps})"
    return found


def _load_survivors(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a dense state dict into a pruned model, keeping its masks.

    A pruned weight lives in ``<name>_orig`` (the forward uses ``_orig * _mask``), so only the survivors take the new
    values. Everything else — biases, BatchNorm affine and running statistics — is loaded as it is.
    """
    current = model.state_dict()
    renamed = {(k + "_orig" if k + "_orig" in current else k): v for k, v in state.items()}
    renamed.update({k: v for k, v in current.items() if k.endswith("_mask")})
    model.load_state_dict(renamed)


def find_ticket(build: Callable[[], nn.Module], train: Split, test: Split, cfg: LotteryConfig,
                seed: int) -> LotteryResult:
    """Iterative magnitude pruning with rewinding; see the module docstring.

    Args:
        build: returns a freshly initialised dense model (called under ``torch.manual_seed``).
        train: ``(x, y)`` tensors used for training.
        test: ``(x, y)`` tensors, only reported.
        cfg: rounds, pruning rate, schedule, scope, rewind point, reinit control.
        seed: seeds the initialisation, the batch order and the ``reinit`` draws.

    Returns:
        The pruned model (masks permanent), dense test accuracy and one record per round.
    """
    (x, y), (x_test, y_test) = train, test
    torch.manual_seed(seed)
    model = build()
    dense_opt = Optim(cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay)
    steps = _steps_per_epoch(len(x), cfg.batch_size)
    rewind_state = _train_with_rewind_point(model, x, y, dense_opt, cfg.rewind_epoch * steps, seed)
    dense_accuracy, dense_loss = evaluate(model, x_test, y_test)
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
        fit(model, x, y, retrain, seed=seed, desc=f"lottery round {r}/{cfg.rounds}")
        accuracy, loss = evaluate(model, x_test, y_test)
        records.append({"round": r, "sparsity": weight_sparsity(model), "accuracy": accuracy, "loss": loss})
        log.info("lottery round %d: sparsity %.4f accuracy %.4f loss %.4f", r, records[-1]["sparsity"], accuracy, loss)
    make_permanent(model)
    return LotteryResult(model=model, dense_accuracy=dense_accuracy, rounds=records, rewind_state=rewind_state)
