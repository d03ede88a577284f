"""Measured ONNX Runtime latency of single layers and of whole networks: the lookup table behind latency allocation.

``LatencyTable`` times each convolution / linear layer as a one-layer ONNX model (only its kernel, from ORT's
profiler) at one batch size and thread count, keeps whole-network measurements beside them, and persists both as JSON
keyed by ORT version, CPU, batch and threads. :mod:`pruning.allocation.latency` allocates channels with it. The last
functions build, time (with the one timing protocol, :mod:`pruning.runtime.timing`) and profile the pruned network a
candidate allocation gives (the search's yardstick).
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from pruning import dependency
from pruning.atomic import write_bytes
from pruning.counting import count_macs, example_input
from pruning.data import forward, tensors
from pruning.runtime.export import export_onnx
from pruning.runtime.session import session, session_options
from pruning.runtime.timing import Protocol, Speedup, paired_speedup

log = logging.getLogger(__name__)

TABLE_VERSION = 4  # 4: entries keep their conditions, no whole-network timings
MAX_AGE_DAYS = 30
MAX_SPREAD = 1.5
STEADY_MS = 0.05
# timing a candidate during the search: dense and candidate alternately, 10 runs each per round, at least 5 rounds
# (more while the interval on the ratio is wide), the median of the rounds' ratios (pruning/runtime/timing.py)
SEARCH_PROTOCOL = Protocol(warmup=2, repeats=10, rounds=5)


@dataclass(frozen=True)
class LayerSpec:
    """One convolution or linear layer, as ONNX Runtime will run it (BatchNorm folded, activation fused); or a
    transformer's attention core (softmax(Q K^T) V: ``cin`` heads of ``cout`` features over ``spatial`` = (tokens,))."""

    kind: str  # "conv", "linear" or "attention"
    cin: int
    cout: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    spatial: tuple[int, ...] = ()  # input spatial size (H, W) or (L,); attention: (tokens,)
    rows: int = 1  # a linear layer's rows per sample: a transformer's tokens

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.cin == self.cout

    def with_channels(self, cin: int, cout: int) -> LayerSpec:
        return replace(self, cin=cin, cout=cout, groups=cin if self.depthwise else self.groups)

    def out_spatial(self) -> tuple[int, ...]:
        return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st in
                     zip(self.spatial, self.padding, self.dilation, self.kernel, self.stride, strict=True))

    def macs(self) -> int:
        if self.kind == "linear":
            return self.rows * self.cin * self.cout
        if self.kind == "attention":  # Q K^T and its product with V
            return 2 * self.cin * self.cout * self.spatial[0] ** 2
        return (self.cin // self.groups) * self.cout * int(np.prod(self.kernel)) * int(np.prod(self.out_spatial()))

    def key(self) -> str:
        doc = asdict(self)
        if self.rows == 1:
            del doc["rows"]  # the key a table measured before token rows existed has
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def layer_specs(model: nn.Module, spec: Any) -> dict[nn.Module, LayerSpec]:
    """Every Conv1d/Conv2d/Linear of ``model`` with the input size it sees (one forward pass with hooks) on ``spec``
    (a per-sample shape or an example input); a linear layer applied to every token keeps the tokens as its rows."""
    specs: dict[nn.Module, LayerSpec] = {}
    x = example_input(spec)
    batch = tensors(x)[0].shape[0]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
        x = inputs[0]
        if isinstance(module, nn.Linear):
            rows = max(x.numel() // (batch * module.in_features), 1)
            specs[module] = LayerSpec("linear", module.in_features, module.out_features, rows=rows)
        else:
            specs[module] = LayerSpec("conv", module.in_channels, module.out_channels, tuple(module.kernel_size),
                                      tuple(module.stride), tuple(module.padding), tuple(module.dilation),
                                      module.groups, tuple(x.shape[2:]))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            forward(model.eval(), x)
    finally:
        for h in handles:
            h.remove()
    return specs


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _one_layer_onnx(spec: LayerSpec, batch: int) -> bytes:
    """A one-node ONNX model (Conv + Relu, or Gemm) with random weights: what the layer costs inside the network."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if spec.kind == "attention":  # one input serves as queries, keys and values: the kernels' cost is the same
        x_shape = y_shape = [batch, spec.cin, spec.spatial[0], spec.cout]
        nodes = [helper.make_node("Transpose", ["x"], ["kt"], perm=[0, 1, 3, 2]),
                 helper.make_node("MatMul", ["x", "kt"], ["s"]),
                 helper.make_node("Softmax", ["s"], ["p"], axis=-1),
                 helper.make_node("MatMul", ["p", "x"], ["y"])]
        graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model.SerializeToString()
    if spec.kind == "linear":
        x_shape = [batch * spec.rows, spec.cin]
        w = rng.standard_normal((spec.cout, spec.cin)).astype(np.float32)
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
        y_shape = [batch * spec.rows, spec.cout]
    else:
        x_shape = [batch, spec.cin, *spec.spatial]
        w = rng.standard_normal((spec.cout, spec.cin // spec.groups, *spec.kernel)).astype(np.float32)
        pads = list(spec.padding) * 2
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=list(spec.kernel),
                                  strides=list(spec.stride), pads=pads, dilations=list(spec.dilation),
                                  group=spec.groups),
                 helper.make_node("Relu", ["c"], ["y"])]
        y_shape = [batch, spec.cout, *spec.out_spatial()]
    b = np.zeros(spec.cout, np.float32)
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@dataclass(frozen=True)
class Node:
    """One node of a network's ORT profile: its operator, input and weight shapes ([] when it has none), median ms."""

    op: str
    x: tuple[int, ...]
    w: tuple[int, ...]
    ms: float


@dataclass(frozen=True)
class Profile:
    """Every kernel of a whole network in execution order, and the median wall time of a whole run."""

    nodes: list[Node]
    run_ms: float  # a whole run while profiling (the profiler slows every node down a little)
    timed_ms: float | None = None  # the same network timed without the profiler (the timing protocol), if known


def network_profile(onnx_model: str | Path | bytes, batch: int, threads: int, input_shape: tuple[int, ...],
                    runs: int = 10, protocol: Protocol | None = None) -> Profile:
    """Median time of every kernel of a whole network, in execution order, from ONNX Runtime's profiler. With a
    ``protocol``, the profiled session and a plain one are timed alternately (so both see the same load) and the
    plain run's median is ``timed_ms``: the profiler's own slowdown, measured."""
    import onnxruntime as ort

    timed_ms = None
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "net")
        model = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
        if protocol is None:
            for _ in range(runs + 2):
                sess.run(None, {inp.name: x})
        else:
            timed_ms = paired_speedup(sess, session(onnx_model, threads), x, threads, protocol).candidate_ms
        events = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, list[float]] = {}
    meta: dict[str, tuple[str, list[list[int]]]] = {}
    runs_ms = [e["dur"] / 1e3 for e in events if e.get("name") == "model_run"]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times.setdefault(e["name"], []).append(e["dur"] / 1e3)
            meta[e["name"]] = (e["args"].get("op_name", ""),
                               [next(iter(v.values())) for v in e["args"].get("input_type_shape", [])])
    nodes = []
    for name, t in times.items():
        op, shapes = meta[name]
        nodes.append(Node(op, tuple(shapes[0]) if shapes else (), tuple(shapes[1]) if len(shapes) > 1 else (),
                          float(np.median(t[2:] or t))))
    return Profile(nodes, float(np.median(runs_ms[2:] or runs_ms)) if runs_ms else sum(n.ms for n in nodes), timed_ms)


@dataclass
class LatencyTable:
    """Per-layer latency (ms) on ONNX Runtime at one batch size and thread count, measured on demand, saved as JSON.

    Every entry keeps its conditions: ``[ms, spread, measured_at]`` (spread = p90 / p10 of its runs). An entry older
    than :data:`MAX_AGE_DAYS` or measured while the machine was noisy (spread above :data:`MAX_SPREAD`) is measured
    again when asked for. Whole-network timings are never kept: the search times every candidate afresh against the
    dense network, alternately (:func:`pruning.runtime.timing.paired_speedup`), so an old noisy moment can only make
    an estimate worse, never decide which model ships; what is reproducible is the decision (the allocation, in
    prune.json and the model file), not the timings.
    """

    batch: int
    threads: int
    entries: dict[str, list[float]] = field(default_factory=dict)
    measured: int = 0  # entries measured in this process (the rest came from the file)
    seconds: float = 0.0  # spent measuring them
    stale: int = 0  # entries found in the file but measured again (too old or too noisy)
    # measured in this process: used as they are (one noisy layer is measured twice already; asking again must give
    # the same figure, or the greedy path's estimate would move under it)
    fresh: set[str] = field(default_factory=set, repr=False)

    @property
    def context(self) -> str:
        import onnxruntime as ort

        return f"ort={ort.__version__}|cpu={_cpu_model()}|batch={self.batch}|threads={self.threads}"

    @classmethod
    def load(cls, path: str | Path | None, batch: int, threads: int) -> LatencyTable:
        """The table for this batch/threads/ORT/CPU from ``path`` (other contexts in the file are kept, not used)."""
        table = cls(batch, threads)
        if path and Path(path).is_file():
            try:
                doc = json.loads(Path(path).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("latency table %s is not valid JSON: measuring afresh", path)
                return table
            if isinstance(doc, dict) and doc.get("version") == TABLE_VERSION:
                entries = doc.get("tables", {}).get(table.context, {})
                table.entries = {k: [float(x) for x in v] for k, v in entries.items()
                                 if isinstance(v, list) and len(v) == 3 and all(isinstance(x, int | float) for x in v)}
        return table

    def save(self, path: str | Path) -> None:
        path = Path(path)
        doc: dict[str, Any] = {"version": TABLE_VERSION, "tables": {}}
        if path.is_file():
            try:
                old = json.loads(path.read_text())
                if isinstance(old, dict) and old.get("version") == TABLE_VERSION:
                    doc["tables"] = old.get("tables", {})
            except (json.JSONDecodeError, UnicodeDecodeError):
                pass
        doc["tables"][self.context] = dict(sorted(self.entries.items()))
        write_bytes(path, (json.dumps(doc, indent=0) + "\n").encode())

    def usable(self, entry: list[float]) -> bool:
        ms, spread, at = entry
        # below STEADY_MS the timer's jitter, not the machine's load, makes the spread
        steady = spread <= MAX_SPREAD or ms < STEADY_MS
        return ms > 0 and steady and 0 <= time.time() - at <= MAX_AGE_DAYS * 86_400

    def ms(self, spec: LayerSpec) -> float:
        """The layer's latency, measured now if the table does not have a usable entry for it."""
        key = spec.key()
        entry = self.entries.get(key)
        if entry is None or (key not in self.fresh and not self.usable(entry)):
            self.stale += entry is not None
            start = time.perf_counter()
            model = _one_layer_onnx(spec, self.batch)
            ops = None if spec.kind == "attention" else LAYER_OPS
            ms, spread = kernel_ms(model, self.threads, ops=ops)
            if spread > MAX_SPREAD and ms >= STEADY_MS:  # a noisy moment: once more, and keep the steadier of the two
                again = kernel_ms(model, self.threads, ops=ops)
                ms, spread = min((ms, spread), again, key=lambda t: t[1])
            self.entries[key] = entry = [ms, spread, time.time()]
            self.fresh.add(key)
            self.measured += 1
            self.seconds += time.perf_counter() - start
        return entry[0]


LAYER_OPS = ("Conv", "FusedConv", "Gemm")  # a one-layer model's own kernel (one per run)


def kernel_ms(model: bytes, threads: int, runs: int = 15,
              ops: tuple[str, ...] | None = LAYER_OPS) -> tuple[float, float]:
    """(median time per run in ms, p90 / p10 spread) of the model's kernels of ``ops`` (None: every kernel, summed per
    run), from ONNX Runtime's profiler.

    Only the layer's own kernel counts: in a one-layer model ORT adds layout reorders (NCHW <-> NCHWc) around the
    convolution that inside the network happen once, not per layer; timing the whole session would charge them to
    every layer and overstate what cutting channels saves.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "layer")
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = np.random.default_rng(0).standard_normal(inp.shape).astype(np.float32)
        for _ in range(runs + 3):
            sess.run(None, {inp.name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    times = [e["dur"] / 1e3 for e in events  # the same kernels in every run, in order
             if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
             and (ops is None or e["args"].get("op_name") in ops)]
    per_run = max(len(times) // (runs + 3), 1)
    t = np.array(times[:per_run * (runs + 3)]).reshape(-1, per_run).sum(axis=1)[3:]  # the first runs are warm-up
    return float(np.median(t)), float(np.percentile(t, 90) / max(np.percentile(t, 10), 1e-9))


# Whole-network measurements of a candidate allocation: the pruned network itself, built by torch-pruning.

def pruned_copy(model: nn.Module, input_shape: tuple[int, ...], ratios: dict[nn.Module, float],
                ignored_names: list[str]) -> nn.Module:
    """A copy of ``model`` pruned with ``ratios`` (keys: modules of ``model``); l1 picks the channels."""
    trial = copy.deepcopy(model)
    if not ratios:
        return trial
    by_name = dict(model.named_modules())
    twin = {by_name[n]: m for n, m in trial.named_modules() if n in by_name}
    pruner, _ = dependency.build_pruner(trial, input_shape, tp.importance.GroupMagnitudeImportance(p=1), ratio=0.0,
                                     scope="uniform", iterative_steps=1, round_to=None, max_layer_ratio=1.0,
                                     ignored=dependency.ignored_modules(trial, ignored_names),
                                     ratio_dict={twin[m]: r for m, r in ratios.items()})
    dependency.prune_step(pruner, trial)
    return trial


def pruned_macs(model: nn.Module, input_shape: tuple[int, ...], ratios: dict[nn.Module, float],
                ignored_names: list[str]) -> int:
    """torch-pruning's MACs count of ``model`` pruned with ``ratios``."""
    return count_macs(pruned_copy(model, input_shape, ratios, ignored_names), input_shape)[0]


class Yardstick:
    """The search's measurements of a candidate allocation: ``model`` pruned with a ratio map (torch-pruning, l1
    picks the channels), exported, and timed alternately with the dense network — a fresh pairing for every
    candidate, so a noisy moment hits both (:func:`pruning.runtime.timing.paired_speedup`)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], ignored_names: list[str], batch: int,
                 threads: int, opset: int, protocol: Protocol = SEARCH_PROTOCOL):
        self.model, self.shape, self.ignored = model, input_shape, ignored_names
        self.batch, self.threads, self.opset, self.protocol = batch, threads, opset, protocol
        self.x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
        self.dense_onnx = self._export(model)
        self.dense = session(self.dense_onnx, threads)

    def _export(self, model: nn.Module) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trial.onnx"
            export_onnx(model.eval(), self.shape, path, self.opset)
            return path.read_bytes()

    def speedup(self, ratios: dict[nn.Module, float], protocol: Protocol | None = None,
                max_rounds: int = 15) -> Speedup:
        """Dense / pruned with ``ratios``, timed alternately (the search's protocol unless given)."""
        trial = self._export(pruned_copy(self.model, self.shape, ratios, self.ignored))
        return paired_speedup(self.dense, trial, self.x, self.threads, protocol or self.protocol, max_rounds=max_rounds)

    def profile(self, ratios: dict[nn.Module, float]) -> Profile:
        """The per-kernel ORT profile of the model pruned with ``ratios`` (the dense model for an empty map)."""
        onnx = self.dense_onnx if not ratios else self._export(pruned_copy(self.model, self.shape, ratios, self.ignored))
        return network_profile(onnx, self.batch, self.threads, self.shape, protocol=self.protocol)

    def macs(self, ratios: dict[nn.Module, float]) -> int:
        return pruned_macs(self.model, self.shape, ratios, self.ignored)
