"""One complexity-aware training run (:func:`.method.train` drives its epochs): the network and its Bernoulli gates,
the two optimisers (weights: SGD with Nesterov; θ: projected SGD), one training step (the task loss, the expected
complexity and their gradients), the dual ascent on the strength, and the removal of dead structures for real."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from pruning import dependency, residual
from pruning.checkpoint import Edit, blocks_edit, channels_edit
from pruning.counting import count_macs, example_input
from pruning.data import Data, forward
from pruning.errors import PruningError
from pruning.methods.base import Context
from pruning.methods.complexity_aware import bernoulli, estimators
from pruning.methods.complexity_aware.config import Config
from pruning.task import Task, cross_entropy
from pruning.training import evaluate, resolve_device, summed

log = logging.getLogger(__name__)

DUAL_P = 1.0  # the dual controller's proportional gain (log strength per unit of log(E[MACs] · target / MACs₀))


def _per_sample(task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The task's loss of every sample (ARM weighs each sample's own loss difference; a loss other than cross-entropy
    is called once per sample)."""
    if task.loss is cross_entropy:
        return F.cross_entropy(out, y, reduction="none")
    return torch.stack([task.loss(out[i:i + 1], y[i:i + 1]) for i in range(len(y))])


class Run:
    """One training run: the network, its gates, the optimisers, and what was removed (the edits). Under DDP
    (``world`` > 1, :func:`.method.train_rank`) every rank holds the same network and gates: the weights' gradients are
    averaged by the DDP wrapper, θ's estimates by :meth:`train_step`, so every rank takes the same θ step and removes
    the same structures; the wrapper is built again after every removal, on the unwrapped network."""

    def __init__(self, net: nn.Module, cfg: Config, ctx: Context, rank: int = 0, world: int = 1,
                 device: torch.device | None = None) -> None:
        self.net, self.cfg, self.ctx, self.spec = net, cfg, ctx, ctx.data.spec
        self.rank, self.world = rank, world
        self.wrapped: nn.Module = net
        self.edits: list[Edit] = []
        self.removed_blocks: list[str] = []
        self.gates = self._build(None)
        if self.gates.size == 0:
            raise PruningError("complexity-aware training found nothing to gate: no prunable channel group and no "
                               "residual block (set unit_gates / block_gates, or check ignored_layers)",
                               field="unit_gates")
        theta1 = torch.ones(self.gates.size)
        self.macs0, self.params0 = (float(v) for v in self.gates.expected(theta1))
        self.dense_total = float(count_macs(net, self.spec)[0])
        self.ungated = self.dense_total / self.macs0  # all MACs per gated-layer MAC; updated after every removal
        self.log_strength = math.log(max(cfg.strength, 1e-6))
        self.dual = 0.0
        self.undecided_at_settle: float | None = None
        self.dev = device if device is not None else resolve_device(ctx.device)
        self.steps_per_epoch = max(1, len(ctx.data.train) // cfg.batch_size)  # type: ignore[arg-type]
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.step = 0
        self._optimisers()

    def _build(self, carried: dict[str, Any] | None) -> bernoulli.Gates:
        cfg = self.cfg
        ignored = dependency.ignored_modules(self.net, cfg.ignored_layers)
        g = bernoulli.build(self.net, self.spec, ignored, carried, cfg.theta_init, cfg.unit_gates, cfg.block_gates)
        g.attach(self.net)
        self.is_block = torch.zeros(g.size, dtype=torch.bool)
        self.is_block[[b.index for b in g.blocks]] = True
        return g

    def _optimisers(self) -> None:
        """Fresh optimisers for the current parameters (shapes change with every removal; momentum restarts), and
        under DDP a fresh wrapper for them."""
        cfg = self.cfg
        if self.world > 1:
            from pruning.distributed import wrap

            self.wrapped = wrap(self.net.to(self.dev), self.dev)
        self.opt_w = torch.optim.SGD(self.net.parameters(), lr=self._lr(), momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)

    def _lr(self) -> float:
        return 0.5 * self.cfg.lr * (1 + math.cos(math.pi * min(self.step, self.total_steps) / self.total_steps))

    def weights(self) -> torch.Tensor:
        """λ weighting per gate: 2(1 − β) for units, 2β for blocks."""
        w = torch.full((self.gates.size,), 2 * (1 - self.cfg.layer_vs_unit))
        for b in self.gates.blocks:
            w[b.index] = 2 * self.cfg.layer_vs_unit
        return w

    def complexity(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        macs, params = self.gates.expected(theta)
        rho = self.cfg.flops_vs_params
        return (1 - rho) * macs / self.macs0 + rho * params / self.params0, macs, params

    def train_step(self, x: Any, y: torch.Tensor, phase: str, settled: float, gen: torch.Generator) -> dict[str, float]:
        """One step: weights always; θ in the ``search`` and ``settle`` phases (``settled``: share of the settle
        phase done); the strength follows the MACs target in ``search`` only."""
        g, cfg = self.gates, self.cfg
        self.step += 1
        for group in self.opt_w.param_groups:
            group["lr"] = self._lr()
        theta = g.theta()
        self.opt_w.zero_grad(set_to_none=True)
        if cfg.estimator == "relaxed":
            xi, k, weight = estimators.relaxed_draw(theta, len(y), ~g.frozen, self.is_block, gen)
            xi = xi.to(self.dev).requires_grad_(True)
            g.set(xi)
            loss = self.ctx.task.loss(forward(self.wrapped, x), y)  # the batch mean: n ∂loss/∂ξ_ik is sample i's own
            g.set(None)
            loss.backward()
            estimate = torch.zeros(g.size) if xi.grad is None else estimators.relaxed_grad(xi.grad.cpu(), k, weight, g.size)
        else:
            u, z1, z2 = estimators.arm_pair(theta, len(y), gen)
            g.set(z1.to(self.dev))
            l1 = _per_sample(self.ctx.task, forward(self.wrapped, x), y)
            g.set(z2.to(self.dev))
            l2 = _per_sample(self.ctx.task, forward(self.wrapped, x), y)
            g.set(None)
            loss = 0.5 * (l1.mean() + l2.mean())
            loss.backward()
            estimate = estimators.theta_grad(l1.detach().cpu(), l2.detach().cpu(), u, theta)
        if self.world > 1:  # every rank's estimate is of its share of the batch: their mean is the batch's
            estimate = summed(estimate, self.dev) / self.world
        self.opt_w.step()
        out = {"loss": float(loss.detach())}
        if phase == "settle" and g.size:
            if bool((g.decided < 0).any()):
                self.decide()
            with torch.no_grad():  # a linear anneal from θ at the phase's start to the decided vertex
                g.probs.copy_(g.start + (g.decided - g.start) * settled)
        elif phase == "search" and g.size:
            t = theta.clone().requires_grad_(True)
            cost, _, _ = self.complexity(t)
            (grad_c,) = torch.autograd.grad(cost, t)
            strength = math.exp(self.log_strength)
            grad = estimate + strength * self.weights() * grad_c
            with torch.no_grad():
                g.probs.sub_(cfg.theta_lr * grad.masked_fill(g.frozen, 0.0)).clamp_(0.0, 1.0)
            if cfg.target_macs_reduction is not None:
                with torch.no_grad():
                    _, macs, _ = self.complexity(g.theta())
                # the whole network's MACs (BatchNorm, pooling, ... included) from the gated layers' expectation
                gap = math.log(max(float(macs), 1.0) * self.ungated * cfg.target_macs_reduction / self.dense_total)
                # dual ascent on log s with a proportional term (a PI controller): the integral finds the strength
                # that holds the budget, the proportional part takes the pressure off as soon as E[MACs] reaches it
                # (θ lags the strength; integral action alone overshot the target: docs/design.md, "Measured reasons")
                self.dual = min(max(self.dual + cfg.dual_lr * gap, -20.0), 20.0)
                self.log_strength = min(max(math.log(max(cfg.strength, 1e-6)) + self.dual + DUAL_P * gap, -20.0), 20.0)
            out["complexity"] = float(cost.detach())
        return out

    def decide(self) -> None:
        """The vertex each gate settles to: θ >= 0.5 (the mode); with a MACs target, :meth:`_budget_cut`. A layer
        keeps at least one unit."""
        g, cfg = self.gates, self.cfg
        theta = g.theta()
        keep = theta >= 0.5
        fresh = g.decided < 0
        if not bool(fresh.all()):  # a gate new after a removal in the settle phase (a regrouped layer): its mode
            g.decided = torch.where(fresh, keep.float(), g.decided)
            g.start = torch.where(fresh, theta, g.start)
            return
        if cfg.target_macs_reduction is not None:
            keep = bernoulli.budget_cut(g, theta, self.dense_total / cfg.target_macs_reduction, self.ungated,
                                    self.is_block)
        for grp in g.groups:
            span = slice(grp.offset, grp.offset + grp.size)
            if not bool(keep[span].any()):
                keep[grp.offset + int(theta[span].argmax())] = True
        g.decided = keep.float().masked_fill(g.frozen, 1.0)
        g.start = theta.clone()
        log.info("complexity-aware: settling %d of %d gates at 1 (undecided before: max min(θ, 1 − θ) = %.3f)",
                 int(keep.sum()), g.size, float(torch.minimum(theta, 1 - theta).max()))
        self.undecided_at_settle = float(torch.minimum(theta, 1 - theta).max())

    def remove_dead(self, force: bool = False) -> tuple[int, list[str]]:
        """Remove the structures whose gate has died (``force``: every gate below 0.5, the final mode). Returns
        (units removed, blocks removed)."""
        g, cfg = self.gates, self.cfg
        theta = g.theta().detach()
        with torch.no_grad():
            if force:
                ready = (theta < 0.5) & ~g.frozen
            else:
                g.below = torch.where(theta <= cfg.prune_threshold, g.below + 1, torch.zeros_like(g.below))
                ready = (g.below >= cfg.patience) & ~g.frozen
        cuts: dict[int, list[int]] = {}
        for i, grp in enumerate(g.groups):
            dead = [r for r in range(grp.size) if ready[grp.offset + r]]
            if len(dead) == grp.size:  # never the last unit: the most alive one stays, frozen at θ = 1
                keep = max(range(grp.size), key=lambda r: float(theta[grp.offset + r]))
                dead.remove(keep)
                with torch.no_grad():
                    g.frozen[grp.offset + keep] = True
                log.info("complexity-aware: %s keeps its last unit (frozen; its block gate decides)", grp.name)
            if dead:
                cuts[i] = dead
        blocks = [b.name for b in g.blocks if ready[b.index]]
        if not cuts and not blocks:
            return 0, []
        carried = bernoulli.carry(g)
        g.detach()
        self.net.to("cpu")  # tracing, removal and the gates' rebuild run on example inputs on the CPU
        if cuts:
            dg = tp.DependencyGraph().build_dependency(self.net, example_input(self.spec))
            for i, dead in cuts.items():
                grp = g.groups[i]
                gone = set(dead)
                for point, chans in grp.points.items():
                    bernoulli.drop(carried, point, [c for c, r in enumerate(chans) if r not in gone])
                fn = dg.get_pruner_of_module(grp.root).prune_out_channels
                dg.get_pruning_group(grp.root, fn, dead).prune()
            history = channels_edit(dg.pruning_history())
            if self.edits and self.edits[-1]["kind"] == "channels":
                self.edits[-1]["history"] += history["history"]
            else:
                self.edits.append(history)
        if blocks:
            self.net = residual.remove(self.net, blocks, self.spec)
            self.edits.append(blocks_edit(blocks))
            self.removed_blocks += blocks
        self.gates = self._build(carried)
        self.ungated = count_macs(self.net, self.spec)[0] / float(self.gates.expected(torch.ones(self.gates.size))[0])
        self.net.to(self.dev)
        self._optimisers()
        return sum(len(d) for d in cuts.values()), blocks

    def evaluate(self, data: Data) -> tuple[float, float]:
        g = self.gates
        theta = g.theta().detach()
        g.set(((theta >= 0.5).float() if self.cfg.eval_gates == "mode" else theta).to(self.dev))
        try:
            return evaluate(self.net, data.test, device=str(self.dev), task=self.ctx.task)
        finally:
            g.set(None)
