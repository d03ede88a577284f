"""Complexity-aware training (Guenter & Sideris 2024): learn which units and which residual blocks to keep, while
training, and remove them for real as soon as they die.

Every unit (a channel of a torch-pruning dependency group) and every residual block is scaled by ξ ~ Bernoulli(θ)
(:mod:`.bernoulli`). Weights W and the gates' probabilities θ minimise

    J(W, θ) = E_ξ[L(W, ξ)] + s · [(1 − ρ) · E[MACs](θ) / MACs₀ + ρ · E[params](θ) / params₀]

with three knobs: ``strength`` s (accuracy vs pruning level), ``flops_vs_params`` ρ, and ``layer_vs_unit`` β, which
scales the complexity gradient of block gates by 2β and of unit gates by 2(1 − β) (0.5: as the complexity says). The
per-structure regularisation weights are therefore not set by hand: structure k pays λ_k = s · ∂C/∂θ_k, its share of
the expected complexity at the current θ (a convolution's cost depends on its input and output gates and its block
gate). E[L]'s gradient in θ is an unbiased estimate (:mod:`.estimators`: ``relaxed`` by default, or ``arm``); W
gets the pathwise gradient of the same pass. θ takes projected SGD steps θ ← clip(θ − η_θ ĝ, 0, 1), as the paper's
projected stochastic optimisation: plain SGD keeps each structure's pressure proportional to its cost (Adam would give
every gate the same step size).

Phases: ``warmup_epochs`` (weights only, gates sampled), search (θ learns; with ``target_macs_reduction`` the strength
follows a PI dual ascent on E[MACs] <= MACs₀ / target, in log s), settle (the last ``settle_epochs``: every θ is
annealed linearly to the vertex it is decided to — θ >= 0.5, or the θ-ranking cut nearest the MACs budget — while the
weights adapt; so every gate ends at exactly 0 or 1). A structure whose θ stays at or below ``prune_threshold`` for
``patience`` epoch-end checks is removed for real — channels by torch-pruning, blocks by the depth method's removal —
and training continues on the smaller network; a layer's last unit is never removed by unit gates (it is frozen at
θ = 1: the block gate decides about the layer). At the end θ = 1 gates fold away (a scale of 1) and θ = 0 structures
are removed: the result is an ordinary pruned model whose edits replay on the dense architecture.

Our reconstruction (the paper's body could not be read; docs/methods.md "Complexity-aware training" says what is
whose): the cost formula and λ_k, the estimators, the pruning condition, the settle anneal and the dual ascent.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torch_pruning as tp
from pydantic import Field
from torch import nn

from pruning import dependency, residual
from pruning.checkpoint import Edit, blocks_edit, channels_edit
from pruning.counting import count_macs, example_input
from pruning.data import Data, batches, forward
from pruning.errors import PruningError
from pruning.methods.base import Context, Outcome, step_record
from pruning.methods.complexity_aware import bernoulli, estimators
from pruning.schema import Section
from pruning.task import Task, cross_entropy
from pruning.training import evaluate, resolve_device

log = logging.getLogger(__name__)

DUAL_P = 1.0  # the dual controller's proportional gain (log strength per unit of log(E[MACs] · target / MACs₀))


class Config(Section):
    """Train with Bernoulli gates on units and residual blocks; structures whose gate dies are removed."""

    method: Literal["complexity_aware"] = "complexity_aware"
    start: Literal["scratch", "dense"] = Field("scratch", description="scratch: train from the architecture's random "
                                               "init (the paper's setting) | dense: start from the trained dense model")
    strength: float = Field(1.0, ge=0, le=10_000, description="accuracy vs pruning level: loss (nats) the whole "
                            "network's complexity is worth; 0 = no pressure")
    layer_vs_unit: float = Field(0.5, ge=0, le=1, description="0 = only units pay for complexity, 1 = only residual "
                                 "blocks, 0.5 = both as their cost says")
    flops_vs_params: float = Field(0.0, ge=0, le=1, description="what complexity means: 0 = MACs (speed), 1 = "
                                   "parameters (size), between = a mix")
    target_macs_reduction: float | None = Field(None, gt=1, le=1_000, description="instead of a fixed strength: dense / "
                                                "pruned MACs to land on (strength adapted by dual ascent)")
    epochs: int = Field(30, ge=1, le=10_000, description="training epochs (warm-up included)")
    batch_size: int = Field(64, ge=2, le=65_536, description="batch size")
    lr: float = Field(0.05, gt=0, le=10, description="weights: SGD (Nesterov) learning rate, cosine schedule")
    momentum: float = Field(0.9, ge=0, lt=1, description="weights: SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="weights: L2 weight decay")
    theta_lr: float = Field(0.05, gt=0, le=1_000, description="θ: projected SGD step (constant)")
    settle_epochs: int = Field(5, ge=0, le=10_000, description="last epochs (at most epochs - warmup - 1): each gate's θ "
                               "is annealed to the vertex it is decided to (θ >= 0.5, or the MACs target's cut) while "
                               "the weights adapt")
    theta_init: float = Field(0.95, gt=0, lt=1, description="every gate's θ at the start")
    warmup_epochs: int = Field(2, ge=0, le=10_000, description="epochs before θ learns (weights train with sampled gates)")
    prune_threshold: float = Field(1e-3, gt=0, lt=0.5, description="a structure whose θ is at or below this ...")
    patience: int = Field(3, ge=1, le=10_000, description="... at this many epoch-end checks in a row is removed")
    unit_gates: bool = Field(True, description="gate units (channels) — off: layer pruning only (ablation)")
    block_gates: bool = Field(True, description="gate residual blocks — off: unit pruning only (ablation)")
    estimator: Literal["relaxed", "arm"] = Field("relaxed", description="unbiased θ gradient: relaxed (one gate per "
                                                 "sample integrated over [0, 1]; one pass) | arm (two passes)")
    eval_gates: Literal["mode", "expectation"] = Field("mode", description="gates when evaluating during training: "
                                                       "mode (θ >= 0.5 -> 1, else 0: the network shipped) | expectation (θ)")
    dual_lr: float = Field(0.002, gt=0, le=10, description="with target_macs_reduction: step of log strength per "
                           "training step, times log(E[MACs] · target / MACs₀)")
    ignored_layers: list[str] = Field(default_factory=list, description="module names whose units are never gated "
                                      "(the classifier's outputs never are)")


def _per_sample(task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The task's loss of every sample (ARM weighs each sample's own loss difference; a loss other than cross-entropy
    is called once per sample)."""
    if task.loss is cross_entropy:
        return F.cross_entropy(out, y, reduction="none")
    return torch.stack([task.loss(out[i:i + 1], y[i:i + 1]) for i in range(len(y))])


class _Run:
    """One training run: the network, its gates, the optimisers, and what was removed (the edits)."""

    def __init__(self, net: nn.Module, cfg: Config, ctx: Context) -> None:
        self.net, self.cfg, self.ctx, self.spec = net, cfg, ctx, ctx.data.spec
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
        self.dev = resolve_device(ctx.device)
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
        """Fresh optimisers for the current parameters (shapes change with every removal; momentum restarts)."""
        cfg = self.cfg
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
            loss = self.ctx.task.loss(forward(self.net, x), y)  # the batch mean: n ∂loss/∂ξ_ik is sample i's own
            g.set(None)
            loss.backward()
            estimate = torch.zeros(g.size) if xi.grad is None else estimators.relaxed_grad(xi.grad.cpu(), k, weight, g.size)
        else:
            u, z1, z2 = estimators.arm_pair(theta, len(y), gen)
            g.set(z1.to(self.dev))
            l1 = _per_sample(self.ctx.task, forward(self.net, x), y)
            g.set(z2.to(self.dev))
            l2 = _per_sample(self.ctx.task, forward(self.net, x), y)
            g.set(None)
            loss = 0.5 * (l1.mean() + l2.mean())
            loss.backward()
            estimate = estimators.theta_grad(l1.detach().cpu(), l2.detach().cpu(), u, theta)
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
            return evaluate(self.net, data.test, device=self.ctx.device, task=self.ctx.task)
        finally:
            g.set(None)


def _histogram(theta: torch.Tensor) -> list[int]:
    return [int(v) for v in torch.histc(theta, bins=10, min=0.0, max=1.0)]


def train(net: nn.Module, cfg: Config, ctx: Context) -> tuple[nn.Module, list[Edit], dict[str, Any]]:
    """Complexity-aware training of ``net`` (modified): (the pruned network, its edits, the report)."""
    data = ctx.data
    run = _Run(net, cfg, ctx)
    dense_macs = run.dense_total
    gen = torch.Generator().manual_seed(ctx.seed)
    order = torch.Generator().manual_seed(ctx.seed + 1)
    torch.manual_seed(ctx.seed)
    epochs: list[dict[str, Any]] = []
    histograms: list[list[int]] = []
    start = time.perf_counter()
    run.net.to(run.dev)
    settle = min(cfg.settle_epochs, max(0, cfg.epochs - cfg.warmup_epochs - 1))
    per_epoch = max(1, sum(1 for n in range(0, len(data.train), cfg.batch_size)  # type: ignore[arg-type]
                           if min(cfg.batch_size, len(data.train) - n) >= 2))  # type: ignore[arg-type]
    for epoch in range(1, cfg.epochs + 1):
        learn = epoch > cfg.warmup_epochs
        phase = "warmup" if not learn else "settle" if epoch > cfg.epochs - settle else "search"
        run.net.train()
        total, seen, cost, i = 0.0, 0, 0.0, 0
        for batch in batches(data.train, cfg.batch_size, shuffle=True, generator=order):
            if len(batch) < 2:
                continue
            batch = batch.to(run.dev)
            done = epoch - (cfg.epochs - settle) - 1 + (i + 1) / per_epoch
            settled = min(1.0, done / settle) if phase == "settle" else 0.0
            out = run.train_step(batch.x, batch.y, phase, settled, gen)
            total, seen, cost, i = total + out["loss"] * len(batch), seen + len(batch), out.get("complexity", cost), i + 1
        units, blocks = run.remove_dead() if learn else (0, [])
        theta = run.gates.theta().detach()
        with torch.no_grad():
            _, e_macs, e_params = run.complexity(theta)
        live_macs, live_params = count_macs(run.net.to("cpu"), data.spec)
        run.net.to(run.dev)
        metric, test_loss = run.evaluate(data)
        alive = run.gates.alive()
        record = {"epoch": epoch, "loss": total / max(seen, 1), "complexity_cost": cost,
                  "strength": math.exp(run.log_strength), "expected_macs": float(e_macs),
                  "expected_params": float(e_params), "live_macs": live_macs, "live_params": live_params,
                  "live_macs_reduction": dense_macs / live_macs, f"test_{ctx.task.metric_name}": metric,
                  "test_loss": test_loss, "units_removed": units, "blocks_removed": len(blocks),
                  "blocks_alive": alive.pop("blocks"), "units_alive": sum(alive.values()),
                  "undecided": float(torch.minimum(theta, 1 - theta).max()) if theta.numel() else 0.0,
                  "seconds": time.perf_counter() - start, **{f"alive.{k}": v for k, v in alive.items()}}
        epochs.append(record)
        histograms.append(_histogram(theta))
        log.info("complexity-aware epoch %d/%d: loss %.4f, %s %.4f, live MACs ÷%.2f (expected ÷%.2f), strength %.3g, "
                 "units %d, blocks %d%s%s", epoch, cfg.epochs, record["loss"], ctx.task.metric_name, metric,
                 record["live_macs_reduction"], run.dense_total / (float(e_macs) * run.ungated), record["strength"],
                 record["units_alive"], record["blocks_alive"], f", removed {units} units" if units else "",
                 f", removed blocks {blocks}" if blocks else "")
    if bool((run.gates.decided >= 0).all()):  # the anneal's end point (the last step stops a rounding short of it)
        run.gates.probs.copy_(run.gates.decided)
    theta = run.gates.theta().detach()
    undecided = float(torch.minimum(theta, 1 - theta).max()) if theta.numel() else 0.0
    units, blocks = run.remove_dead(force=True)  # the mode: θ < 0.5 goes, θ >= 0.5 folds away with the hooks
    run.gates.detach()
    run.net.to("cpu").eval()
    report = {"epochs": epochs, "theta_histograms": histograms, "undecided_at_end": undecided,
              "undecided_at_settle": run.undecided_at_settle,
              "final_mode_units_removed": units, "final_mode_blocks_removed": blocks,
              "removed_blocks": run.removed_blocks, "strength_final": math.exp(run.log_strength),
              "train_seconds": time.perf_counter() - start, "start": cfg.start,
              "knobs": {"strength": cfg.strength, "layer_vs_unit": cfg.layer_vs_unit,
                        "flops_vs_params": cfg.flops_vs_params, "target_macs_reduction": cfg.target_macs_reduction}}
    return run.net, run.edits, report


def apply(model: nn.Module, cfg: Config, ctx: Context) -> Outcome:
    """Train ``ctx.build()`` (``start: scratch``) or ``model`` (``dense``) with gates; step 0 is the dense model."""
    steps = [step_record(0, 0.0, model, ctx)]
    net = ctx.build() if cfg.start == "scratch" else model
    widths = _widths(net)
    net, edits, report = train(net, cfg, ctx)
    after = _widths(net)
    report["structure"] = [{"layer": n, "dense": w, "found": after.get(n, 0)} for n, w in widths.items()]
    kept = sum(r["found"] for r in report["structure"])
    ratio = 1 - kept / max(sum(widths.values()), 1)
    steps.append(step_record(1, ratio, net, ctx))
    return Outcome(net, edits, steps, report)


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
            for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)}
