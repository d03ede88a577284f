"""Per-operator INT8: quantize a few operator selections of one model and keep the one measured fastest.

Quantizing every operator ONNX Runtime can quantize is not always fastest: an INT8 kernel pays for its quantize /
dequantize nodes, and where an operator does little arithmetic per byte it moves — depthwise convolutions, the 1x1
tensors of a squeeze-excitation path, elementwise Mul / Add / Sigmoid (SiLU, residual adds, gating) — that overhead
can exceed what the integer arithmetic saves. Which of them lose depends on the CPU and on the model, so it is
measured, not guessed: each candidate leaves one or more of these groups in fp32 (ORT's ``nodes_to_exclude``),
candidates that leave the same nodes in fp32 are one, and all of them are timed against the fp32 model with the one
timing protocol (:func:`pruning.runtime.timing.latency`, batch 1). The fastest INT8 candidate is kept even when fp32
is faster still: the evaluate stage's shipping decision then ships fp32, and the report says so.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from pruning.runtime.quantize import preprocess, quantize
from pruning.runtime.timing import Protocol, latency

log = logging.getLogger(__name__)

GROUPS = ("depthwise", "se", "elementwise")  # what a candidate may leave in fp32, in naming order
ELEMENTWISE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh",
                             "Softmax", "Where"})
POOLS = frozenset({"GlobalAveragePool", "ReduceMean"})  # where a squeeze-excitation path starts
FP32 = "fp32"  # the reference model's name among the timed ones
LABEL = "b1"

CLEAR_WIN = 0.1  # how much faster than quantizing everything another selection must measure to be kept instead
Timer = Callable[..., dict[str, dict[str, float]]]  # the signature of pruning.runtime.timing.latency


@dataclass(frozen=True)
class Candidate:
    """One operator selection: its name (``all``, ``no_depthwise``, ``no_depthwise_se``, ...) and the nodes it leaves
    in fp32."""

    name: str
    excluded: frozenset[str]


@dataclass(frozen=True)
class Selection:
    """What was measured: each candidate's p50 at batch 1 (ms), the fp32 model's, and the one kept."""

    chosen: Candidate
    candidates: tuple[Candidate, ...]  # the timed ones
    latency_ms: dict[str, float]  # candidate name (and ``fp32``) -> median over rounds of the rounds' p50
    same_as: dict[str, str]  # a candidate not timed -> the timed one whose quantized graph it equals

    @property
    def int8_faster_than_fp32(self) -> bool:
        return self.latency_ms[self.chosen.name] < self.latency_ms[FP32]

    def report(self) -> dict[str, Any]:
        return {"chosen": self.chosen.name, "int8_faster_than_fp32": self.int8_faster_than_fp32,
                "fp32_latency_ms_b1": self.latency_ms[FP32],
                "candidates": {c.name: {"excluded_nodes": len(c.excluded), "latency_ms_b1": self.latency_ms[c.name]}
                               for c in self.candidates},
                "same_as": self.same_as, "chosen_excluded": sorted(self.chosen.excluded)}


def quantizable_ops() -> frozenset[str]:
    """The operator types ORT's ``quantize_static`` quantizes when not told otherwise (its own default)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)


def _constants(graph: onnx.GraphProto) -> set[str]:
    """Tensors that do not depend on the model's inputs' values: initializers, constants, shapes, and what is computed
    from them alone."""
    known = {i.name for i in graph.initializer}
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.op_type in ("Constant", "Shape", "Size") or all(not i or i in known for i in node.input):
            known |= set(node.output)
    return known


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _depthwise(graph: onnx.GraphProto) -> set[str]:
    """Conv nodes with group == input channels > 1 (each output channel sees one input channel)."""
    dims = {i.name: list(i.dims) for i in graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.input] if v.type.HasField("tensor_type")}
    out = set()
    for node in graph.node:
        group = _attr(node, "group", 1)
        if node.op_type != "Conv" or group <= 1:
            continue
        weight, x = dims.get(node.input[1]), shapes.get(node.input[0])
        if (weight is not None and len(weight) > 1 and weight[1] == 1) or (x is not None and len(x) > 1 and x[1] == group):
            out.add(node.name)
    return out


def _pools_space(node: onnx.NodeProto, graph: onnx.GraphProto) -> bool:
    """A global pool over the spatial axes that keeps them (as 1x1): GlobalAveragePool, or ReduceMean over axes >= 2."""
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean" or not _attr(node, "keepdims", 1):
        return False
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1:  # opset >= 18: axes are an input
        init = {i.name: i for i in graph.initializer}
        axes = numpy_helper.to_array(init[node.input[1]]).tolist() if node.input[1] in init else None
    return bool(axes) and all(a >= 2 or -2 <= a < 0 for a in axes)  # N, C kept; -2, -1: the last two axes


def _squeeze_excitation(graph: onnx.GraphProto) -> set[str]:
    """The nodes of squeeze-excitation paths: from a global pool, through what computes on the pooled (1x1) tensors
    only, to the Mul that gates the feature map with them (the gate included)."""
    const = _constants(graph)
    out: set[str] = set()
    for pool in (n for n in graph.node if _pools_space(n, graph)):
        small, path, gates = set(pool.output), [pool], []
        for node in graph.node:
            live = [i for i in node.input if i and i not in const]
            if not any(i in small for i in live):  # the pool's own inputs are not small: it comes first
                continue
            if all(i in small for i in live):
                small |= set(node.output)
                path.append(node)
            elif node.op_type == "Mul":
                gates.append(node)
        needed = {i for g in gates for i in g.input if i in small}
        for node in reversed(path):  # keep what the gates read, not e.g. a classifier head after the same pool
            if needed & set(node.output):
                out.add(node.name)
                needed |= {i for i in node.input if i in small}
        out |= {g.name for g in gates}
    return out


def groups(model: onnx.ModelProto) -> dict[str, frozenset[str]]:
    """The names of the nodes of each group of :data:`GROUPS` that ORT would quantize."""
    graph = model.graph
    ops = quantizable_ops()
    quantized = {n.name for n in graph.node if n.op_type in ops}
    found = {"depthwise": _depthwise(graph), "se": _squeeze_excitation(graph),
             "elementwise": {n.name for n in graph.node if n.op_type in ELEMENTWISE_OPS}}
    return {g: frozenset(found[g] & quantized) for g in GROUPS}


def candidates(model: onnx.ModelProto) -> list[Candidate]:
    """``all`` (every operator ORT quantizes), then each group and each combination of groups left in fp32, fewest
    groups first; a candidate that leaves the same nodes in fp32 as an earlier one, or every node, is dropped."""
    found = groups(model)
    everything = frozenset(n.name for n in model.graph.node if n.op_type in quantizable_ops())
    out: list[Candidate] = []
    seen: set[frozenset[str]] = set()
    for k in range(len(GROUPS) + 1):
        for combo in itertools.combinations(GROUPS, k):
            excluded = frozenset().union(*(found[g] for g in combo))
            if excluded in seen or (combo and excluded >= everything):
                continue
            seen.add(excluded)
            out.append(Candidate("no_" + "_".join(combo) if combo else "all", excluded))
    return out


def select(src: str | Path, dst: str | Path, calibration: np.ndarray | list[dict[str, np.ndarray]], *,
           per_channel: bool = True, method: str = "minmax", activation_type: str = "uint8", threads: int = 1,
           protocol: Protocol = Protocol(5, 20, 5), timer: Timer = latency) -> Selection:
    """Quantize ``src`` (static QDQ, calibrated once on ``calibration``) as each of its :func:`candidates`, time them
    and ``src`` alternately at batch 1 on the first calibration sample (``timer``: the timing protocol), and write
    the fastest INT8 candidate to ``dst``."""
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        preprocess(src, pre)
        models: dict[str, str | Path | bytes] = {FP32: src}
        timed, same_as, graphs = [], {}, {}
        for cand in candidates(onnx.load(str(pre))):  # "all" first: its calibration covers every tensor
            path = Path(tmp) / f"{cand.name}.onnx"
            quantize(pre, path, "static", calibration, per_channel, method, activation_type,
                     exclude=cand.excluded, preprocessed=True, ranges=Path(tmp) / "ranges.json")
            # excluding a node can change nothing: an Add between quantized convolutions keeps its Q/DQ anyway
            digest = hashlib.sha256(onnx.load(str(path)).graph.SerializeToString()).hexdigest()
            if digest in graphs:
                same_as[cand.name] = graphs[digest]
                continue
            graphs[digest], models[cand.name] = cand.name, path
            timed.append(cand)
        x = calibration if isinstance(calibration, np.ndarray) else calibration[0]
        timings = timer(models, x, {LABEL: 1}, threads, protocol, desc="INT8 operator selection")
        ms = {name: timings[name][f"latency_ms_{LABEL}"] for name in models}
        # a selection leaving operators in fp32 must beat the first ("all") by CLEAR_WIN: within the timing's noise
        # the decision would flip from run to run, and the shipped model (its size, its accuracy) with it — `dvc repro
        # --force` must give the same metrics. Ties: the first, which leaves fewer nodes in fp32.
        first = timed[0]
        clear = [c for c in timed if ms[c.name] <= ms[first.name] * (1 - CLEAR_WIN)]
        chosen = min(clear, key=lambda c: ms[c.name]) if clear else first
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(models[chosen.name], dst)
    selection = Selection(chosen, tuple(timed), ms, same_as)
    for cand in timed:
        log.info("INT8 %s (%d nodes in fp32): %.3f ms at batch 1%s", cand.name, len(cand.excluded), ms[cand.name],
                 " <- kept" if cand == chosen else "")
    log.info("fp32: %.3f ms at batch 1; the kept INT8 is %s", ms[FP32],
             "faster" if selection.int8_faster_than_fp32 else "not faster: INT8 does not pay here")
    return selection
