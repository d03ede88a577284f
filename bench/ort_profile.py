"""Where does ONNX Runtime spend its time, dense vs pruned? Per-kernel times from ORT's profiler, by layer kind.

Builds an ImageNet-shape zoo model (random init), prunes a copy with torch-pruning's uniform l2 ratio (optionally
rounded), runs both with ORT's profiler (1 thread, full optimisation) and prints time per kind of kernel
(depthwise conv, pointwise conv, other conv, the rest), the ratio dense/pruned per kind, and with --layers the layers
whose time did not fall with their MACs.

    python -m bench.ort_profile --arch mobilenetv2_imagenet --ratio 0.3 --round-to 8 [--layers]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch_pruning as tp

from pruning import dependency
from pruning.counting import count_macs
from pruning.runtime.export import export_onnx
from pruning.runtime.session import session_options
from pruning.zoo import build_model

SHAPE = (3, 224, 224)


def profile(model: torch.nn.Module, runs: int) -> dict[str, tuple[float, list, str]]:
    """node name -> (median kernel ms, input shapes, op type)."""
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model.eval(), SHAPE, Path(tmp) / "m.onnx", 17)
        opts = session_options(1)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "p")
        sess = ort.InferenceSession(str(Path(tmp) / "m.onnx"), opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, *SHAPE)).astype(np.float32)
        for _ in range(runs + 5):
            sess.run(None, {"input": x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, list[float]] = defaultdict(list)
    shapes: dict[str, list] = {}
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[e["name"]].append(e["dur"] / 1e3)
            shapes[e["name"]] = [next(iter(v.values())) for v in e["args"].get("input_type_shape", [])]
            ops[e["name"]] = e["args"].get("op_name", "?")
    return {n: (float(np.median(t[5:])), shapes[n], ops[n]) for n, t in times.items()}


def kind(shapes: list, op: str) -> str:
    if op not in ("Conv", "FusedConv") or len(shapes) < 2 or len(shapes[1]) != 4:
        return op  # reorders, adds, pooling, Gemm
    conv = "NCHWc conv" if op == "Conv" else "plain conv (NCHW)"
    w = shapes[1]
    if w[1] == 1 and w[2] > 1:
        return f"depthwise, {conv}"
    return f"pointwise, {conv}" if w[2] == 1 else f"other, {conv}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenetv2_imagenet")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--round-to", type=int, default=None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--layers", action="store_true", help="list the layers whose time did not fall with MACs")
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = build_model(args.arch, {}, SHAPE, 1000).eval()
    pruned = copy.deepcopy(dense)
    pruner, _ = dependency.build_pruner(pruned, SHAPE, tp.importance.GroupMagnitudeImportance(p=2), ratio=args.ratio,
                                     scope="uniform", iterative_steps=1, round_to=args.round_to, max_layer_ratio=0.9,
                                     ignored=dependency.ignored_modules(pruned, []))
    dependency.prune_step(pruner, pruned)
    macs = count_macs(dense, SHAPE)[0] / count_macs(pruned, SHAPE)[0]
    d, p = profile(dense, args.runs), profile(pruned, args.runs)
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for i, prof in enumerate((d, p)):  # each network on its own: odd widths change the node types and names
        for ms, shapes, op in prof.values():
            by_kind[kind(shapes, op)][i] += ms
    print(f"{args.arch}, uniform ratio {args.ratio}, round_to {args.round_to}: MACs {macs:.2f}x fewer")
    print(f"{'kernels':<30} {'dense ms':>9} {'pruned ms':>9}")
    for k, (a, b) in sorted(by_kind.items(), key=lambda kv: -max(kv[1])):
        print(f"{k:<30} {a:9.3f} {b:9.3f}")
    total_d, total_p = sum(v[0] for v in by_kind.values()), sum(v[1] for v in by_kind.values())
    print(f"{'all kernels':<30} {total_d:9.3f} {total_p:9.3f}  ({total_d / total_p:.2f}x faster)")
    if args.layers:
        for name, (ms, shapes, _) in d.items():
            pm, pshapes, _ = p.get(name, (0.0, [], ""))
            if pm >= 0.8 * ms and ms > 0.02:
                print(f"  {name.removesuffix('_kernel_time')}: {ms:.3f} -> {pm:.3f} ms  {shapes[:2]} -> {pshapes[:2]}")


if __name__ == "__main__":
    main()
