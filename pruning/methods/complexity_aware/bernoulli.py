"""Bernoulli gates on units and residual blocks: where they act, how they are sampled, the expected complexity.

Complexity-aware training (Guenter & Sideris 2024; :mod:`.method`) scales every prunable unit and
every removable residual block by a random ξ ~ Bernoulli(θ). Here:

- **Unit gates**: one θ per channel of a torch-pruning dependency group, so coupled channels (a residual add's inputs,
  a depthwise convolution and its producer, a concat's slice) share it: channel c of the group is ξ_c-scaled at every
  layer that produces it — after its BatchNorm when a convolution feeds one directly, else at the layer's output.
  A group whose channels are all zero is exactly a network without them, so removal changes nothing.
- **Block gates**: one θ per residual block (:func:`pruning.residual.find`): ``y = S(x) + ξ_B · F(x)``, applied at the
  module whose output is F.
- Gates act through forward hooks: the model's modules and names stay the user's, so torch-pruning traces it, the
  depth method's block removal works on it, and a model file replays it. ``xi`` None: no scaling at all.

The θ gradient's estimators are in :mod:`.estimators`.

:meth:`Gates.expected` is E_ξ[MACs] and E_ξ[params] as functions of θ, exact under independent gates: a convolution
with G groups costs, per output position, k · Σ_g Σ_(i,o in g) E[ξ_i ξ_o] · Π θ_B(blocks around it), where
E[ξ_i ξ_o] = θ_i θ_o for two different gates and θ_i when input and output channel share one (a depthwise
convolution's); BatchNorm adds 2 parameters per channel, a bias 1.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from pruning import dependency, residual
from pruning.counting import example_input
from pruning.data import forward

log = logging.getLogger(__name__)

@dataclass
class UnitGroup:
    """The channels of one torch-pruning group: gates ``offset .. offset + size``."""

    name: str  # the root layer's name
    root: nn.Module
    offset: int
    size: int
    points: dict[str, list[int]]  # gated module name -> for each of its output channels, the group channel


@dataclass
class BlockGate:
    name: str  # the residual block's name (pruning.residual)
    index: int  # its gate
    point: str  # the module whose output is the branch F


@dataclass
class _Cost:
    """One layer's share of the expected complexity: indexes into θ extended by a constant 1 (index G)."""

    name: str
    kernel: int  # weights per (input, output) channel pair
    positions: int  # output positions per sample (MACs = pairs * kernel * positions)
    groups: int
    gate_in: torch.Tensor  # [in channels]
    gate_out: torch.Tensor  # [out channels]
    same: list[tuple[int, int]]  # (gate, number of (in, out) pairs sharing it): E[ξ ξ] = θ there
    bias: bool
    blocks: list[int]
    norm: bool = False  # a BatchNorm: 2 parameters per channel, no MACs counted


@dataclass
class Gates:
    """Gates of one model state (rebuilt after every removal; θ carried over by layer and channel)."""

    groups: list[UnitGroup]
    blocks: list[BlockGate]
    costs: list[_Cost]
    probs: torch.Tensor  # θ, [G], in [0, 1]
    frozen: torch.Tensor  # bool [G]: fixed at θ = 1 (a layer's last unit: the layer's gate decides about the layer)
    below: torch.Tensor  # int [G]: epoch-end checks in a row with θ at or below the pruning threshold
    decided: torch.Tensor  # [G]: the vertex (0 / 1) the settle phase anneals θ to; -1 before it starts
    start: torch.Tensor  # [G]: θ when the settle phase started
    points: dict[str, list[tuple[torch.Tensor, bool]]] = field(default_factory=dict)  # module -> (gate idx, last dim?)
    xi: torch.Tensor | None = None  # [N or 1, G + 1] while gating, else None
    handles: list[Any] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.probs.numel())

    def theta(self) -> torch.Tensor:
        return self.probs.detach().masked_fill(self.frozen, 1.0)

    def attach(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for name, entries in self.points.items():
            self.handles.append(modules[name].register_forward_hook(self._hook(entries)))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _hook(self, entries: list[tuple[torch.Tensor, bool]]):
        def scale(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
            if self.xi is None:
                return out
            for idx, last in entries:
                g = self.xi[:, idx]  # [N, C] (a block gate: [N, 1])
                shape = [g.shape[0]] + [1] * (out.dim() - 1)
                shape[-1 if last else 1] = g.shape[1]
                out = out * g.view(shape).to(out.dtype)
            return out
        return scale

    def set(self, xi: torch.Tensor | None) -> None:
        """Gate with ``xi`` ([N, G] per sample, or [G]); None: no gating."""
        if xi is None or self.size == 0:
            self.xi = None
            return
        xi = xi.view(-1, self.size) if xi.dim() == 1 else xi
        self.xi = torch.cat([xi, xi.new_ones(xi.shape[0], 1)], dim=1)

    def expected(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[MACs], E[params]) per sample of the gated layers, differentiable in ``theta``."""
        ext = torch.cat([theta, theta.new_ones(1)])
        macs, params = theta.new_zeros(()), theta.new_zeros(())
        for c in self.costs:
            scale = ext[c.blocks].prod() if c.blocks else theta.new_ones(())
            t_out = ext[c.gate_out]
            if c.norm:
                params = params + 2 * t_out.sum() * scale
                continue
            t_in = ext[c.gate_in]
            pairs = (t_in.view(c.groups, -1).sum(1) * t_out.view(c.groups, -1).sum(1)).sum()
            for k, n in c.same:
                pairs = pairs + n * (ext[k] - ext[k] ** 2)
            macs = macs + pairs * c.kernel * c.positions * scale
            params = params + (pairs * c.kernel + (t_out.sum() if c.bias else 0)) * scale
        return macs, params

    def alive(self) -> dict[str, int]:
        """Units per group (by root layer) and blocks (``blocks``) still at θ >= 0.5."""
        theta = self.theta()
        out = {g.name: int((theta[g.offset:g.offset + g.size] >= 0.5).sum()) for g in self.groups}
        out["blocks"] = int(sum(float(theta[b.index]) >= 0.5 for b in self.blocks))
        return out


PER_GATE = ("probs", "frozen", "below", "decided", "start")  # what a gate carries across a rebuild


def _gate_point(dg: tp.DependencyGraph, module: nn.Module, group_modules: set[nn.Module]) -> nn.Module:
    """Where a layer's output channels are gated: after the BatchNorm it feeds directly (a zero before BatchNorm
    would come out as its shift), else at its own output."""
    node = dg.module2node.get(module)
    outs = node.outputs if node is not None else []
    if len(outs) == 1 and isinstance(outs[0].module, nn.modules.batchnorm._BatchNorm) and outs[0].module in group_modules:
        return outs[0].module
    return module


def _shapes(model: nn.Module, spec: Any) -> dict[nn.Module, tuple[int, ...]]:
    """Each conv / linear layer's output shape for one sample."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def hook(m: nn.Module, args: Any, out: torch.Tensor) -> None:
        shapes.setdefault(m, tuple(out.shape[1:]))

    layers = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)]
    handles = [m.register_forward_hook(hook) for m in layers]
    training = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            forward(model.eval(), example_input(spec))
    finally:
        for h in handles:
            h.remove()
        for m, t in training.items():
            m.training = t
    return shapes


def build(model: nn.Module, spec: Any, ignored: list[nn.Module], carried: dict[str, Any] | None = None,
          init: float = 0.95, unit_gates: bool = True, block_gates: bool = True) -> Gates:
    """Gates for ``model``; θ from ``carried`` (:func:`carry`) where a layer / block had one, else ``init``."""
    names = {m: n for n, m in model.named_modules()}
    groups, in_map, out_map = _unit_groups(model, spec, ignored, names) if unit_gates else ([], {}, {})
    offset = sum(g.size for g in groups)
    blocks: list[BlockGate] = []
    found = residual.find(model, spec) if block_gates else {}
    for b in found.values():
        point = residual.branch_output(model, b)
        if point is None:
            log.info("complexity-aware: block %s has no gate (its branch does not end in a module call)", b.name)
            continue
        blocks.append(BlockGate(b.name, offset, point))
        offset += 1
    costs = _costs(model, spec, in_map, out_map, {g.index: found[g.name].branch for g in blocks}, offset)
    gates = Gates(groups, blocks, costs, torch.full((offset,), float(init)), torch.zeros(offset, dtype=torch.bool),
                  torch.zeros(offset, dtype=torch.long), torch.full((offset,), -1.0), torch.full((offset,), float(init)))
    if carried:
        _restore(gates, carried)
    for g in groups:
        for point, chans in g.points.items():
            gates.points.setdefault(point, []).append((torch.tensor(chans) + g.offset, _is_linear(model, point)))
    for b in blocks:
        gates.points.setdefault(b.point, []).append((torch.tensor([b.index]), False))
    return gates


Channels = dict[nn.Module, dict[int, int]]  # layer -> its channel -> gate


def _unit_groups(model: nn.Module, spec: Any, ignored: list[nn.Module], names: dict[nn.Module, str]
                 ) -> tuple[list[UnitGroup], Channels, Channels]:
    """torch-pruning's groups as unit gates (gates 0 .. Σ sizes), and every layer's input / output channel -> gate."""
    probe = dependency._pruner(model, spec, tp.importance.GroupMagnitudeImportance(p=2), 0.0, "uniform", 1, None,
                               1.0, ignored, None, None)
    dg = probe.DG
    groups: list[UnitGroup] = []
    in_map: Channels = {}
    out_map: Channels = {}
    offset = 0
    for found in dependency.prunable_groups(dg, model, probe.ignored_layers):
        group, root, n = found.group, found.root, found.channels
        members = {dep.target.module for dep, _ in group}
        points: dict[str, list[int]] = {}
        for item in group.items:
            dep, m = item.dep, item.dep.target.module
            if not isinstance(m, nn.modules.conv._ConvNd | nn.Linear | nn.modules.batchnorm._BatchNorm):
                continue
            plain = [(int(i), int(r)) for i, r in zip(item.idxs, item.root_idxs, strict=True)]
            norm = isinstance(m, nn.modules.batchnorm._BatchNorm)
            if dg.is_out_channel_pruning_fn(dep.handler):
                out_map.setdefault(m, {}).update({i: offset + r for i, r in plain})
                if not norm:  # a BatchNorm is gated as its conv's gate point, not on its own
                    point = _gate_point(dg, m, members)
                    width = point.num_features if point is not m else dg.get_out_channels(m)
                    chans = points.setdefault(names[point], [0] * width) if width else None
                    for i, r in plain if chans is not None else ():
                        if i < len(chans):
                            chans[i] = r
            if dg.is_in_channel_pruning_fn(dep.handler) and not norm:
                in_map.setdefault(m, {}).update({i: offset + r for i, r in plain})
        groups.append(UnitGroup(found.name, root, offset, n, points))
        offset += n
    return groups, in_map, out_map


def _costs(model: nn.Module, spec: Any, in_map: Channels, out_map: Channels, branches: dict[int, tuple[str, ...]],
           const: int) -> list[_Cost]:
    """Each conv / linear / BatchNorm layer's cost terms: its gates (``const``: the constant 1) and block gates."""
    shapes = _shapes(model, spec)
    costs = []
    for name, m in model.named_modules():
        inside = [k for k, branch in branches.items() if any(name == p or name.startswith(p + ".") for p in branch)]
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            out = [out_map.get(m, {}).get(c, const) for c in range(m.num_features)]
            costs.append(_Cost(name, 0, 0, 1, torch.tensor([], dtype=torch.long), torch.tensor(out), [], False, inside,
                               norm=True))
        elif isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and m in shapes:
            conv = isinstance(m, nn.modules.conv._ConvNd)
            cin, cout = (m.in_channels, m.out_channels) if conv else (m.in_features, m.out_features)
            groups_n = m.groups if conv else 1
            kernel = int(torch.tensor(m.kernel_size).prod()) if conv else 1
            positions = int(torch.tensor(shapes[m]).prod()) // cout
            gin = [in_map.get(m, {}).get(c, const) for c in range(cin)]
            gout = [out_map.get(m, {}).get(c, const) for c in range(cout)]
            same: Counter[int] = Counter()  # (input, output) pairs of one convolution group sharing a gate
            per_in, per_out = cin // groups_n, cout // groups_n
            for g in range(groups_n):
                a = Counter(k for k in gin[g * per_in:(g + 1) * per_in] if k != const)
                b = Counter(k for k in gout[g * per_out:(g + 1) * per_out] if k != const)
                for k in a.keys() & b.keys():
                    same[k] += a[k] * b[k]
            costs.append(_Cost(name, kernel, positions, groups_n, torch.tensor(gin), torch.tensor(gout),
                               sorted(same.items()), m.bias is not None, inside))
    return costs


def _is_linear(model: nn.Module, name: str) -> bool:
    return isinstance(model.get_submodule(name), nn.Linear)


def carry(gates: Gates) -> dict[str, Any]:
    """Every per-gate tensor (:data:`PER_GATE`) by gated layer and channel (units) and by block name, to rebuild
    after a removal."""
    units = {}
    for g in gates.groups:
        for point, chans in g.points.items():
            idx = torch.tensor(chans) + g.offset
            units[point] = tuple(getattr(gates, f).detach()[idx].clone() for f in PER_GATE)
    blocks = {b.name: tuple(getattr(gates, f).detach()[b.index].clone() for f in PER_GATE) for b in gates.blocks}
    return {"units": units, "blocks": blocks}


def _restore(gates: Gates, carried: dict[str, Any]) -> None:
    for g in gates.groups:
        for point, chans in g.points.items():
            if point in carried["units"] and len(carried["units"][point][0]) == len(chans):
                idx = torch.tensor(chans) + g.offset
                for f, v in zip(PER_GATE, carried["units"][point], strict=True):
                    getattr(gates, f)[idx] = v
                break
    for b in gates.blocks:
        if b.name in carried["blocks"]:
            for f, v in zip(PER_GATE, carried["blocks"][b.name], strict=True):
                getattr(gates, f)[b.index] = v


def drop(carried: dict[str, Any], point: str, keep: list[int]) -> None:
    """Keep only the channels ``keep`` of a gated layer's carried gates (after torch-pruning removed the rest)."""
    if point in carried["units"]:
        carried["units"][point] = tuple(t[keep] for t in carried["units"][point])


def budget_cut(g: Gates, theta: torch.Tensor, budget: float, scale: float, is_block: torch.Tensor) -> torch.Tensor:
    """The gates to keep for a MACs ``budget`` (``scale``: whole-network MACs per gated-layer MAC).

    Blocks and units are each cut in θ's order (ties: the costlier first); for every number of blocks cut, the unit
    cut nearest the budget is bisected; of those cuts, the likeliest under θ (Σ log θ kept + Σ log(1 − θ) cut) within
    5 % of the budget wins, else the nearest. (One ranking over both kinds could not mix "one block fewer" with "a few
    units fewer": a block is a big step.)"""
    t = theta.clone().requires_grad_(True)
    (share,) = torch.autograd.grad(g.expected(t)[0], t)
    rank = sorted((i for i in range(g.size) if theta[i] > 0 and not g.frozen[i]),
                  key=lambda i: (float(theta[i]), -float(share[i])))
    blocks, units = [i for i in rank if is_block[i]], [i for i in rank if not is_block[i]]
    base = (theta > 0) | g.frozen
    log_t, log_1t = theta.clamp_min(1e-9).log(), (1 - theta).clamp_min(1e-9).log()

    def kept(nb: int, nu: int) -> torch.Tensor:
        k = base.clone()
        k[blocks[:nb] + units[:nu]] = False
        return k

    def miss(k: torch.Tensor) -> float:
        return abs(math.log(max(float(g.expected(k.float())[0]) * scale, 1.0) / budget))

    candidates = []
    for nb in range(len(blocks) + 1):
        lo, hi = 0, len(units)  # MACs fall as more units go: bisect to the budget
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if float(g.expected(kept(nb, mid).float())[0]) * scale > budget else (lo, mid)
        for nu in {lo, hi}:
            k = kept(nb, nu)
            candidates.append((miss(k), float(log_t[k].sum() + log_1t[~k].sum()), k))
    close = [c for c in candidates if c[0] <= math.log(1.05)]
    return max(close, key=lambda c: c[1])[2] if close else min(candidates, key=lambda c: c[0])[2]
