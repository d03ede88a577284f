"""The latency estimate the greedy allocation (:mod:`pruning.allocation.latency`) walks on: a dependency group's
channel counts, and the network's time as the sum of its layers' table times, calibrated on a profile of the network."""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np
from torch import nn

from pruning.allocation.latency_table import LatencyTable, LayerSpec, Node


@dataclass(eq=False)  # identity: groups are dict keys
class Group:
    root: nn.Module | None  # None: a knob of a transformer's allocation, not a torch-pruning group
    name: str
    channels: int
    keep: int
    floor: int  # fewest channels it may keep
    scores: np.ndarray  # importance per channel, ascending, mean 1
    outs: list[nn.Module]  # layers whose output channels are this group's
    ins: list[nn.Module]  # layers whose input channels are this group's
    step: int = 1  # its channel grid: lcm(step, the channel groups of its grouped convolutions)


class Estimator:
    """Estimated network latency: per layer, the table's time at its current channel counts (scaled to what it took
    in the network) plus the time of the non-convolution kernels charged to it: those that follow it (scaled with its
    output channels) and those that work on its input (scaled with its input channels, summed over every group that
    reaches it: a dense block's concatenation)."""

    def __init__(self, specs: dict[nn.Module, LayerSpec], groups: list[Group], table: LatencyTable):
        self.specs, self.table = specs, table
        self.factor: dict[nn.Module, float] = {}  # in-network / one-layer time, from a profile of the real network
        self.tail: dict[nn.Module, float] = {}  # ms of the kernels after the layer (activations, SE gating, add)
        self.lead: dict[nn.Module, float] = {}  # ms of the kernels on its input (pre-activation BN/ReLU, concat)
        self.head = 0.0  # ms of the kernels before the first layer
        self.out_of: dict[nn.Module, Group] = {}
        # every group whose channels reach the layer's input: one, or several where the input is a concatenation
        self.in_of: dict[nn.Module, list[Group]] = defaultdict(list)
        for g in groups:
            for m in g.outs:
                self.out_of[m] = g
            for m in g.ins:
                if g not in self.in_of[m]:
                    self.in_of[m].append(g)

    def spec(self, m: nn.Module, override: tuple[Group, int] | None = None) -> LayerSpec:
        s = self.specs[m]

        def count(g: Group | None, full: int) -> int:
            if g is None:
                return full
            return override[1] if override and override[0] is g else g.keep

        cout = count(self.out_of.get(m), s.cout)
        if s.depthwise:
            return s.with_channels(cout, cout)
        ins = self.in_of.get(m, ())
        removed = sum(g.channels - count(g, g.channels) for g in ins)
        if removed and s.kind == "linear" and (total := sum(g.channels for g in ins)) and s.cin % total == 0:
            removed *= s.cin // total  # after a flatten, every channel is a block of features
        return s.with_channels(s.cin - removed, cout)

    def layers(self, g: Group) -> set[nn.Module]:
        return {m for m in (*g.outs, *g.ins) if m in self.specs}

    def share(self, g: Group) -> float:
        """The group's layers' share of the network's MACs (at the counts the groups have now)."""
        return sum(self.spec(m).macs() for m in self.layers(g)) / max(self.macs(), 1)

    def ms(self, m: nn.Module, spec: LayerSpec) -> float:
        dense = self.specs[m]
        tail = self.tail.get(m, 0.0) * spec.cout / max(dense.cout, 1)
        lead = self.lead.get(m, 0.0) * spec.cin / max(dense.cin, 1)
        return self.table.ms(spec) * self.factor.get(m, 1.0) + tail + lead

    def total(self) -> float:
        return self.head + sum(self.ms(m, self.spec(m)) for m in self.specs)

    def calibrate(self, nodes: list[Node]) -> int:
        """From a profile of the network at the current channel counts: scale each layer's table time to what its
        kernel took inside the network, and charge every other kernel to a convolution: to the next one when the
        kernel works on that convolution's input width and not on the previous one's output width (a pre-activation
        BatchNorm/ReLU or a concat in a dense block), else to the one it follows (activations, SE gating, residual
        adds, pooling). Convolution kernels are matched to layers by input and weight shapes, in order. Returns the
        number of layers matched."""
        # ORT's NCHWc layout pads channel counts to its block (8 or 16 floats): a layer is also found at its padded
        # shape. Kernels are in execution order, so the first layer of a shape not yet matched is the one.
        queues: dict[tuple[int, ...], deque[nn.Module]] = defaultdict(deque)
        for m in self.specs:
            sp = self.spec(m)
            if sp.kind != "conv":  # a Gemm, by its input width (the profile does not always show its weight's shape)
                queues[(-1, sp.cin)].append(m)
                continue
            pads = [(1, 1)] if sp.groups != 1 and not sp.depthwise else \
                [(1, 1), *((bi, bo) for b in (8, 16) for bi, bo in ((b, b), (1, b), (b, 1)))]
            for bi, bo in pads:
                cin, cout = -(-sp.cin // bi) * bi, -(-sp.cout // bo) * bo
                if sp.depthwise:
                    cin = cout = max(cin, cout)
                key = (cin, *sp.spatial, cout, 1 if sp.depthwise else cin // sp.groups, *sp.kernel)
                if m not in queues[key]:
                    queues[key].append(m)
        done: set[nn.Module] = set()

        def match(node: Node) -> nn.Module | None:
            if node.op in ("Gemm", "FusedGemm", "MatMul") and len(node.x) == 2:
                queue = queues.get((-1, node.x[1]), deque())
            elif node.op in ("Conv", "FusedConv") and len(node.x) >= 3 and len(node.w) == len(node.x):
                queue = queues.get((*node.x[1:], *node.w), deque())
            else:
                return None
            while queue and queue[0] in done:
                queue.popleft()
            if queue:
                done.add(queue[0])
                return queue.popleft()
            return None

        self.tail, self.lead, self.head = {}, {}, 0.0
        matched, last = 0, None
        pending: list[Node] = []

        def same(width: int | None, channels: int) -> bool:  # padded to the NCHWc block or not
            return width in (channels, -(-channels // 8) * 8, -(-channels // 16) * 16)

        def charge(nxt: nn.Module | None) -> None:
            for node in pending:
                width = node.x[1] if len(node.x) >= 2 else None
                if last is None:
                    self.head += node.ms
                elif nxt is not None and not same(width, self.spec(last).cout) and same(width, self.spec(nxt).cin):
                    # stored per dense input channel: scaled by the layer's input width at calibration
                    self.lead[nxt] = self.lead.get(nxt, 0.0) + node.ms * self.specs[nxt].cin / max(self.spec(nxt).cin, 1)
                else:  # likewise per dense output channel
                    self.tail[last] = self.tail.get(last, 0.0) + \
                        node.ms * self.specs[last].cout / max(self.spec(last).cout, 1)
            pending.clear()

        for node in nodes:
            m = match(node)
            if m is None:
                pending.append(node)
                continue
            charge(m)
            last = m
            one = self.table.ms(self.spec(m))
            if one > 0 and node.ms > 0:
                self.factor[m] = node.ms / one
                matched += 1
        charge(None)
        return matched

    def macs(self) -> int:
        return sum(self.spec(m).macs() for m in self.specs)

    def saving(self, g: Group, keep: int) -> tuple[float, int]:
        """(ms saved, MACs saved) by taking group ``g`` from its current count to ``keep``."""
        ms = macs = 0
        for m in self.layers(g):
            now, then = self.spec(m), self.spec(m, (g, keep))
            ms += self.ms(m, now) - self.ms(m, then)
            macs += now.macs() - then.macs()
        return ms, macs
