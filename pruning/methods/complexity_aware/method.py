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

import dataclasses
import logging
import math
import time
from typing import Any

import torch
from torch import nn

from pruning.checkpoint import Edit
from pruning.counting import count_macs
from pruning.data import batches
from pruning.distributed import fit
from pruning.methods.base import Context, Outcome, step_record
from pruning.methods.complexity_aware.config import Config
from pruning.methods.complexity_aware.run import Run
from pruning.training import Optim, reinitialise, shard, summed

log = logging.getLogger(__name__)



def _histogram(theta: torch.Tensor) -> list[int]:
    return [int(v) for v in torch.histc(theta, bins=10, min=0.0, max=1.0)]


def train(net: nn.Module, cfg: Config, ctx: Context, rank: int = 0, world: int = 1,
          device: torch.device | None = None) -> tuple[nn.Module, list[Edit], dict[str, Any]]:
    """Complexity-aware training of ``net`` (modified): (the pruned network, its edits, the report). Under DDP
    (:func:`train_rank`) rank ``rank`` of ``world`` takes samples ``rank``, ``rank + world``, ... of every batch, and
    rank 0 alone evaluates the test split and reports the epochs."""
    data = ctx.data
    run = Run(net, cfg, ctx, rank, world, device)
    dense_macs = run.dense_total
    gen = torch.Generator().manual_seed(ctx.seed + 7919 * rank)  # each rank's own draws of the gates
    order = torch.Generator().manual_seed(ctx.seed + 1)
    torch.manual_seed(ctx.seed)
    epochs: list[dict[str, Any]] = []
    histograms: list[list[int]] = []
    start = time.perf_counter()
    run.net.to(run.dev)
    settle = min(cfg.settle_epochs, max(0, cfg.epochs - cfg.warmup_epochs - 1))
    per_epoch = max(1, sum(1 for n in range(0, len(data.train), cfg.batch_size)  # type: ignore[arg-type]
                           if min(cfg.batch_size, len(data.train) - n) >= 2 * world))  # type: ignore[arg-type]
    for epoch in range(1, cfg.epochs + 1):
        learn = epoch > cfg.warmup_epochs
        phase = "warmup" if not learn else "settle" if epoch > cfg.epochs - settle else "search"
        run.net.train()
        total, seen, cost, i = 0.0, 0, 0.0, 0
        for batch in batches(data.train, cfg.batch_size, shuffle=True, generator=order):
            batch = shard(batch, rank, world)
            if batch is None:
                continue
            batch = batch.to(run.dev)
            done = epoch - (cfg.epochs - settle) - 1 + (i + 1) / per_epoch
            settled = min(1.0, done / settle) if phase == "settle" else 0.0
            out = run.train_step(batch.x, batch.y, phase, settled, gen)
            total, seen, cost, i = total + out["loss"] * len(batch), seen + len(batch), out.get("complexity", cost), i + 1
        if world > 1:  # the epoch's loss over every rank's share
            total, seen = summed(torch.tensor([total, float(seen)], dtype=torch.float64), run.dev).tolist()
        units, blocks = run.remove_dead() if learn else (0, [])
        theta = run.gates.theta().detach()
        with torch.no_grad():
            _, e_macs, e_params = run.complexity(theta)
        live_macs, live_params = count_macs(run.net.to("cpu"), data.spec)
        run.net.to(run.dev)
        metric, test_loss = run.evaluate(data) if rank == 0 else (math.nan, math.nan)
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
    if ctx.ranks.nproc > 1:
        net, edits, report = _in_ranks(net, cfg, ctx)
    else:
        net, edits, report = train(net, cfg, ctx)
    if cfg.retrain:
        report["retrain"] = retrain(net, cfg, ctx)
    after = _widths(net)
    report["structure"] = [{"layer": n, "dense": w, "found": after.get(n, 0)} for n, w in widths.items()]
    kept = sum(r["found"] for r in report["structure"])
    ratio = 1 - kept / max(sum(widths.values()), 1)
    steps.append(step_record(1, ratio, net, ctx))
    return Outcome(net, edits, steps, report)


def retrain(net: nn.Module, cfg: Config, ctx: Context) -> list[dict[str, Any]]:
    """The structure the search found, every weight initialised anew and trained ``cfg.retrain`` epochs (in place;
    the epochs' records): the search's own weights are what lose accuracy (bench complexity_structure)."""
    reinitialise(net, ctx.seed)
    records = fit(ctx.ranks, net, ctx.data.train, Optim(cfg.retrain, cfg.batch_size, cfg.lr, cfg.momentum,
                                                        cfg.weight_decay),
                  ctx.seed, "complexity-aware retrain", device=ctx.device, task=ctx.task)
    net.eval()
    return records


def _in_ranks(net: nn.Module, cfg: Config, ctx: Context) -> tuple[nn.Module, list[Edit], dict[str, Any]]:
    """:func:`train` in ``ctx.ranks.nproc`` DDP processes: rank 0 hands back its edits and weights, which are
    replayed here on ``net`` as a model file's are (so the result is built by this process's code, not unpickled)."""
    from pruning.checkpoint import REPLAY
    from pruning.distributed import launch

    job = {"net": net, "cfg": cfg, "ctx": dataclasses.replace(ctx, build=_no_build), "device": ctx.device}
    result = launch(ctx.ranks, train_rank, job)
    for edit in result["edits"]:
        net = REPLAY[edit["kind"]](net, edit, ctx.data.spec)
    net.load_state_dict(result["state"])
    return net.eval(), result["edits"], result["report"]


def train_rank(job: dict[str, Any], rank: int, world: int, device: torch.device) -> dict[str, Any]:
    """One DDP rank of complexity-aware training (:func:`pruning.distributed.launch` runs it)."""
    net, edits, report = train(job["net"], job["cfg"], job["ctx"], rank, world, device)
    return {"state": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "edits": edits, "report": report}


def _no_build() -> nn.Module:
    raise RuntimeError("a training rank does not build models")  # the stage built it before the ranks started


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
            for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)}
