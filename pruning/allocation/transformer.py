"""Latency allocation for transformers: how many heads, MLP channels and layers to keep, priced by measured ONNX
Runtime time.

A transformer's layers are alike and its config describes them with one head count, one MLP width and one number of
layers (``save_pretrained`` writes nothing else), so where a CNN's allocation (:mod:`pruning.allocation.latency`)
gives every dependency group a count of its own, a transformer's has three knobs, each the same in every layer —
heads per layer, MLP width, layers — the structures Minitron searches over:

1. Pricing: every linear layer at its rows (the tokens it is applied to) and every attention core
   (softmax(Q K^T) V) at its head count, from the latency table (one-layer ONNX models timed in ONNX Runtime at the
   target batch size and thread count, :class:`pruning.allocation.latency_table.LatencyTable`). The kernels not
   priced (norms, activations, reshapes, embeddings) are taken as proportional to the priced ones: one factor, from
   the dense model timed whole at the timing input.
2. A greedy path over the knobs (:class:`MeasuredPath`): each cut where the most estimated time is saved per loss
   added — the loss on calibration data of the model pruned to the cut's counts (no fine-tuning) minus the loss where
   the path is. One currency for heads, channels and layers: criterion scores of a head, a channel and a layer are
   not comparable, and shares of them (the CNN allocation's rule) dropped a layer of a 2-layer text model where
   channels cost far less accuracy (docs/results/transformers.md).
3. The target: a MACs reduction (met on torch-pruning's count of the pruned copy) or a measured speedup
   (:func:`pruning.allocation.speedup.search`: candidates on the path, each pruned, exported and timed alternately
   with the dense model on the timing input — the latency batch at the latency sequence length).

The choice comes back as the layers to drop and one head ratio and one MLP ratio, which the channel method applies
with its usual machinery (the uniform plan keeps every layer alike, so the config still describes the model).
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch_pruning as tp
from torch import nn

from pruning import attention, dependency, layers
from pruning.allocation.estimate import Group
from pruning.allocation.latency import GreedyPath, macs_target
from pruning.allocation.latency_table import SEARCH_PROTOCOL, LatencyTable, LayerSpec, layer_specs
from pruning.allocation.speedup import AIM, MARGIN, SETTLE, search
from pruning.counting import count_macs
from pruning.data import tensors
from pruning.errors import PruningError
from pruning.runtime.export import export_onnx
from pruning.runtime.session import session
from pruning.runtime.timing import Protocol, Speedup, latency, paired_speedup

log = logging.getLogger(__name__)

Counts = dict[str, int]  # knob name -> what every layer keeps: "heads", "mlp" (channels), "layers"


@dataclass
class Choice:
    """What every layer keeps, as the channel method applies it."""

    drop: int  # transformer layers removed (the lowest scores)
    head_ratio: float  # share of each layer's heads removed (a multiple of its key/value groups)
    mlp_ratio: float  # share of each MLP's channels removed (on the round_to grid)
    counts: Counts
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class Layout:
    """The transformer as the three knobs see it: its attention layers (all alike), MLP groups, layer stack."""

    attentions: list[attention.Attention]
    outputs: set[nn.Module]  # the attention layers' output projections (their inputs are the heads)
    mlp_layers: dict[nn.Module, tuple[bool, int]]  # the layers of the channel groups that are not heads (MLPs, a
    # pooler): (whose outputs, not inputs; the group's channels)
    width: int  # the MLPs' width (the widest channel group)
    stack: dict[str, nn.Module]  # transformer layers (empty: none found, no layers knob)

    @property
    def heads(self) -> int:
        return self.attentions[0].heads

    @property
    def unit(self) -> int:  # heads go one per key/value group (attention.plan)
        a = self.attentions[0]
        return a.kv_heads if a.kv_heads < a.heads else 1


def layout(model: nn.Module, pruner: tp.pruner.BasePruner) -> Layout:
    """``model``'s layout from a probe pruner (:func:`pruning.dependency.build_pruner` at ratio 0); PruningError
    (field ``allocation``) when its attention layers differ (one head count per layer is what this allocation
    keeps)."""
    attentions = attention.find(model)
    shapes = {(a.heads, a.kv_heads, a.head_dim) for a in attentions}
    if len(shapes) != 1:
        raise PruningError(f"latency allocation keeps every attention layer alike; this model's differ "
                           f"(heads, key/value heads, head size: {sorted(shapes)}): use allocation macs",
                           field="allocation")
    mlps = dependency.channel_groups(pruner, model)
    outputs = set(dependency.output_projections(pruner.DG, attentions))
    mlp_layers = {}
    for g in mlps:
        for dep, _ in g.group:
            if isinstance(dep.target.module, nn.Linear | nn.Conv1d | nn.Conv2d):
                mlp_layers.setdefault(dep.target.module, (pruner.DG.is_out_channel_pruning_fn(dep.handler), g.channels))
    return Layout(attentions, outputs, mlp_layers, max((g.channels for g in mlps), default=0), layers.find(model))


class Estimate:
    """Estimated time and MACs of the model at the knobs' counts (:data:`Counts`), from the latency table; the
    greedy path's estimator (``saving``, ``total``, ``macs``, ``share``, ``layers``)."""

    def __init__(self, lay: Layout, specs: dict[nn.Module, LayerSpec], table: LatencyTable, knobs: list[Group],
                 step: int, dense_macs: int):
        self.lay, self.specs, self.table, self.knobs, self.step = lay, specs, table, knobs, step
        self.role: dict[nn.Module, tuple[str, Any]] = {}
        for a in lay.attentions:
            q, *kv = a.projections
            self.role[q] = ("qkv" if not kv else "q", a)
            for p in kv:
                self.role[p] = ("kv", a)
        for m in lay.outputs:
            self.role[m] = ("out", None)
        for m, (outs, channels) in lay.mlp_layers.items():
            self.role.setdefault(m, ("mlp_out" if outs else "mlp_in", channels))
        inside = {m for layer in lay.stack.values() for m in layer.modules()}
        self.inside = {m for m in specs if m in inside} if lay.stack else set(specs)
        a = lay.attentions[0]
        self.cores = [LayerSpec("attention", a.heads, a.head_dim, spatial=(specs[x.projections[0]].rows,))
                      for x in lay.attentions]
        self.factor = 1.0  # measured / priced time of the dense model: set by allocate
        self.rest_macs = 0
        self.rest_macs = dense_macs - self.macs()  # what torch-pruning counts beyond the priced layers

    def _counts(self, override: tuple[Group, int] | None = None) -> Counts:
        return {k.name: override[1] if override and override[0] is k else k.keep for k in self.knobs}

    def _mlp(self, channels: int, counts: Counts) -> int:
        width = counts.get("mlp", self.lay.width)
        if width >= self.lay.width:
            return channels
        return min(channels, max(self.step, round(channels * width / self.lay.width / self.step) * self.step))

    def spec(self, m: nn.Module, counts: Counts) -> LayerSpec:
        s = self.specs[m]
        role, of = self.role.get(m, ("", None))
        heads = counts.get("heads", self.lay.heads)
        if role in ("q", "qkv", "kv", "out"):
            a = self.lay.attentions[0]
            kv = a.kv_heads if a.kv_heads < a.heads else heads
            width = {"q": heads, "kv": kv, "qkv": heads + 2 * kv, "out": heads}[role] * a.head_dim
            return s.with_channels(width, s.cout) if role == "out" else s.with_channels(s.cin, width)
        if role == "mlp_out":
            return s.with_channels(s.cin, self._mlp(of, counts))
        if role == "mlp_in":
            return s.with_channels(self._mlp(of, counts), s.cout)
        return s

    def _sum(self, counts: Counts, what: Callable[[LayerSpec], float], cores: bool) -> float:
        layers_left = counts.get("layers", len(self.lay.stack)) / max(len(self.lay.stack), 1)
        outside = sum(what(self.spec(m, counts)) for m in self.specs if m not in self.inside)
        inside = sum(what(self.spec(m, counts)) for m in self.inside)
        if cores:
            heads = counts.get("heads", self.lay.heads)
            inside += sum(what(LayerSpec("attention", heads, c.cout, spatial=c.spatial)) for c in self.cores)
        return outside + layers_left * inside

    def total(self, counts: Counts | None = None) -> float:
        return self.factor * self._sum(counts or self._counts(), self.table.ms, cores=True)

    def macs(self, counts: Counts | None = None) -> int:
        # torch-pruning's counter (the MACs target's) does not count the attention's own products: neither does this
        return int(self.rest_macs + self._sum(counts or self._counts(), LayerSpec.macs, cores=False))

    def saving(self, g: Group, keep: int) -> tuple[float, int]:
        now, then = self._counts(), self._counts((g, keep))
        return self.total(now) - self.total(then), self.macs(now) - self.macs(then)

    def share(self, g: Group) -> float:
        """The knob's share of the network's MACs: what cutting all of it would take."""
        return (self.macs() - self.macs({**self._counts(), g.name: 0})) / max(self.macs(), 1)

    def layers(self, g: Group) -> set[str]:
        return {"all"}  # every knob changes every layer: after any cut, every other knob's best cut is priced again


def knobs(lay: Layout, layers_scored: int, step: int, max_layer_ratio: float) -> list[Group]:
    """The three knobs (those that can be cut), each with its grid and floor: heads one per key/value group down to
    one per group, MLP channels on the ``step`` grid down to what ``max_layer_ratio`` leaves, layers down to one."""
    out = []
    heads, unit = lay.heads, lay.unit
    if heads > unit:
        out.append(_knob("heads", heads, unit, unit))
    floor = max(step, math.ceil(lay.width * (1 - max_layer_ratio) / step) * step)
    if lay.width > floor:
        out.append(_knob("mlp", lay.width, floor, step))
    if layers_scored > 1:
        out.append(_knob("layers", layers_scored, 1, 1))
    return out


def _knob(name: str, count: int, floor: int, step: int) -> Group:
    # scores unused: MeasuredPath measures what a cut loses
    return Group(None, name, count, count, floor, np.ones(count) / count, [], [], step)


class MeasuredPath(GreedyPath):
    """The greedy path with what a cut loses measured: ``loss_at(counts)``, the calibration loss of the model
    pruned to those counts, minus the loss at the path's position; a cut's score is the estimated time it saves per
    loss it adds (losses cached per counts)."""

    def __init__(self, groups: list[Group], est: Estimate, step: int, loss_at: Callable[[Counts], float]):
        self.loss_at, self.losses = loss_at, {}
        super().__init__(groups, est, step)
        dense = self.loss({g.name: g.channels for g in groups})
        self.eps = 1e-4 + 1e-3 * abs(dense)  # a cut that adds no loss still ranks by the time it saves

    def loss(self, counts: Counts) -> float:
        key = tuple(sorted(counts.items()))
        if key not in self.losses:
            self.losses[key] = self.loss_at(counts)
        return self.losses[key]

    def lost(self, g: Group, nxt: int) -> float:
        now = {k.name: k.keep for k in self.groups}
        return max(self.loss({**now, g.name: nxt}) - self.loss(now), 0.0) + self.eps


class TokenYardstick:
    """Measurements of a candidate: ``model`` pruned to the knobs' counts by ``prune`` (a copy each time), exported
    and timed alternately with the dense model on ``x`` (the multi-input counterpart of
    :class:`pruning.allocation.latency_table.Yardstick`), or its calibration loss (``loss``)."""

    def __init__(self, model: nn.Module, spec: Any, x: Any, prune: Callable[[nn.Module, Counts], None],
                 loss: Callable[[nn.Module], float], threads: int, opset: int, protocol: Protocol | None = None):
        self.model, self.spec, self.x, self.prune, self.loss_of = model, spec, x, prune, loss
        self.threads, self.opset, self.protocol = threads, opset, protocol or SEARCH_PROTOCOL
        self.dense_onnx = self._export(model)
        self.dense = session(self.dense_onnx, threads)

    def _export(self, model: nn.Module) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trial.onnx"
            export_onnx(model.eval(), self.spec, path, self.opset)
            return path.read_bytes()

    def pruned(self, counts: Counts) -> nn.Module:
        trial = copy.deepcopy(self.model)
        self.prune(trial, counts)
        return trial

    def speedup(self, counts: Counts) -> Speedup:
        trial = self._export(self.pruned(counts))
        return paired_speedup(self.dense, trial, self.x, self.threads, self.protocol)

    def dense_ms(self) -> float:
        batch = tensors(self.x)[0].shape[0]
        return latency({"dense": self.dense_onnx}, self.x, {"b": batch}, self.threads, self.protocol,
                       desc=None)["dense"]["latency_ms_b"]

    def macs(self, counts: Counts) -> int:
        return count_macs(self.pruned(counts), self.spec)[0]

    def loss(self, counts: Counts) -> float:
        """The calibration loss of the model pruned to ``counts``, before any fine-tuning."""
        return self.loss_of(self.pruned(counts))


def allocate(model: nn.Module, x: Any, lay: Layout, layers_scored: int, table: LatencyTable,
             yardstick: TokenYardstick, *, step: int, max_layer_ratio: float,
             target_macs_reduction: float | None = None, target_speedup: float | None = None, strict: bool = True,
             max_measurements: int = 14) -> Choice:
    """Heads, MLP channels and layers to keep for a MACs-reduction or a measured-speedup target (exactly one).

    Args:
        x: the timing input (the latency batch at the timed sequence length): linear layers are priced at its rows.
        lay: ``model``'s :func:`layout`.
        layers_scored: transformer layers the yardstick can drop (0: no layers knob).
        yardstick: prunes and measures candidates (its ``prune`` applies a :data:`Counts`): speed and loss.
    """
    if (target_macs_reduction is None) == (target_speedup is None):
        raise ValueError("give exactly one of target_macs_reduction and target_speedup")
    specs = layer_specs(model, x)
    groups = knobs(lay, layers_scored, step, max_layer_ratio)
    if not groups:
        raise PruningError("latency allocation found nothing to cut: every knob (heads, MLP channels, layers) is at "
                           "its floor", field="allocation")
    dense_macs = count_macs(model, yardstick.spec)[0]
    est = Estimate(lay, specs, table, groups, step, dense_macs)
    dense_ms = yardstick.dense_ms()
    priced = est.total()
    est.factor = dense_ms / max(priced, 1e-9)
    report: dict[str, Any] = {"step": step, "knobs": {g.name: g.channels for g in groups},
                              "calibration": {"dense_measured_ms": dense_ms, "priced_ms": priced,
                                              "factor": est.factor}}
    path = MeasuredPath(groups, est, step, yardstick.loss)
    report["dense_estimated_ms"] = path.ms[0]

    def counts(gs: Sequence[Group]) -> Counts:
        return {g.name: g.keep for g in gs}

    if target_macs_reduction is not None:
        macs_target(path, target_macs_reduction, yardstick.macs, None, step, report, counts=counts)
        report["estimate_over_count"] = path.macs[0] / est.macs() / report["counted_macs_reduction"]
        _finish(path, report, lambda c: dense_macs / yardstick.macs(c) >= target_macs_reduction,
                lambda c: path.macs[0] / est.macs(c) >= target_macs_reduction * report["estimate_over_count"])
    else:
        search(path, yardstick.speedup, target_speedup, strict, max_measurements, report, counts)  # type: ignore[arg-type]
        if report.get("reached") and report.get("cuts") and report["speedup"]["speedup"] > SETTLE * target_speedup:
            path.go(report["cuts"])
            _finish(path, report, lambda c: _accepted(yardstick.speedup(c), target_speedup, report),
                    lambda c: path.ms[0] / est.total(c) >= target_speedup * AIM, budget=3)
    chosen = counts(groups)
    report.update({"estimated_ms": est.total(), "macs_reduction": path.macs[0] / est.macs(), "keep": chosen,
                   "table_entries": len(table.entries), "table_measured": table.measured,
                   "table_seconds": table.seconds, "losses_measured": len(path.losses),
                   "path": _path(path)})
    return choice(lay, chosen, report)


def _path(path: MeasuredPath) -> list[dict[str, Any]]:
    """The path's cuts as the report shows them: the knob, its new count, the estimated time, MACs and the measured
    calibration loss there (the dense loss first)."""
    counts = {g.name: g.channels for g in path.groups}
    rows = [{"knob": None, "keep": None, "estimated_ms": path.ms[0], "macs": path.macs[0], "loss": path.loss(counts)}]
    for (g, keep), ms, macs in zip(path.cuts, path.ms[1:], path.macs[1:], strict=True):
        counts = {**counts, g.name: keep}
        rows.append({"knob": g.name, "keep": keep, "estimated_ms": ms, "macs": macs,
                     "loss": path.losses.get(tuple(sorted(counts.items())))})
    return rows


def _accepted(sp: Speedup, target: float, report: dict[str, Any]) -> bool:
    report.setdefault("finish_rounds", []).append(sp.as_dict())
    if sp.low >= MARGIN * target:
        report["speedup"] = sp.as_dict()
        return True
    return False


def _finish(path: MeasuredPath, report: dict[str, Any], reaches: Callable[[Counts], bool],
            estimated: Callable[[Counts], bool], budget: int = 6) -> None:
    """The path's last cut can overshoot by much (a whole layer of four). From the position before it: for each knob,
    the least cut that reaches the target by the estimate; tried in the order of the loss they add (least first) and
    the first that ``reaches`` the target (torch-pruning's count, or a measured speedup) kept. Else the path's own."""
    k = path.at
    if k == 0:
        return
    path.go(k - 1)
    now = {g.name: g.keep for g in path.groups}
    options = []
    for g in path.groups:
        for keep in range(g.keep - g.step, g.floor - 1, -g.step):
            c = {**now, g.name: keep}
            if estimated(c):
                options.append((path.loss(c), g.name, keep, c))
                break
    for loss, name, keep, c in sorted(options)[:budget]:
        if (path.cuts[k - 1][0].name, path.cuts[k - 1][1]) == (name, keep):
            break  # the path's own cut: nothing better before it
        log.info("latency allocation: instead of the last cut, %s at %d (loss %.4g)?", name, keep, loss)
        if reaches(c):
            for g in path.groups:
                g.keep = c[g.name]
            report["finish"] = {"from_cuts": k - 1, "knob": name, "keep": keep}
            return
    path.go(k)


def choice(lay: Layout, counts: Counts, report: dict[str, Any] | None = None) -> Choice:
    """The knobs' counts as the channel method applies them: layers to drop, head ratio, MLP ratio."""
    heads, width = counts.get("heads", lay.heads), counts.get("mlp", lay.width)
    return Choice(len(lay.stack) - counts.get("layers", len(lay.stack)) if lay.stack else 0, 1 - heads / lay.heads,
                  1 - width / lay.width if lay.width else 0.0, counts, report or {})
