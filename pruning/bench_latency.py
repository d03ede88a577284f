"""``python -m pruning bench latency``: is the pruned model as much faster as it is smaller, on ONNX Runtime?

For each architecture (ImageNet shape, random init: latency does not depend on the weights' values): the dense model,
the model pruned to ``--target`` x fewer MACs by uniform l2 channel pruning (torch-pruning's default allocation), with
and without channel rounding, and INT8 (static QDQ) on top. All ONNX models of an architecture are timed alternately
in one process (``evaluate.rounds`` rounds, medians). Efficiency = speedup / MACs reduction: 1.0 means the model got
exactly as much faster as it got cheaper.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pruning import surgery
from pruning.config import Config, PruneConfig
from pruning.export import export_onnx
from pruning.measure import latency
from pruning.quantize import quantize
from pruning.schedule import Split, run_schedule, search_ratio
from pruning.zoo import build_model

SHAPE = (3, 224, 224)


def _variants(arch: str, target: float, round_to: list[int | None], tmp: Path, cfg: Config) -> dict[str, dict[str, Any]]:
    """Build, prune, export (and quantize) every variant of ``arch``; returns name -> {path, macs, params}."""
    torch.manual_seed(0)
    dense = build_model(arch, {}, SHAPE, 1000).eval()
    x = torch.randn(32, *SHAPE)  # calibration / BatchNorm data: random, like the weights
    split = Split(x, torch.zeros(32, dtype=torch.long))
    out: dict[str, dict[str, Any]] = {}
    macs, params = surgery.count_macs(dense, SHAPE)
    out["dense"] = {"path": tmp / "dense.onnx", "macs": macs, "params": params}
    export_onnx(dense, SHAPE, out["dense"]["path"], cfg.export.opset)
    for rt in round_to:
        name = f"pruned (MACs alloc, round_to={rt})"
        pcfg = PruneConfig(criterion="l2", ratio=None, target_macs_reduction=target, round_to=rt, bn_recalibration=False,
                           calibration_batches=1)
        model = surgery.clone(dense)
        ratio = search_ratio(model, SHAPE, pcfg, target, split, seed=0)
        run_schedule(model, SHAPE, pcfg, ratio, split, Split(x[:4], split.y[:4]), seed=0)
        macs, params = surgery.count_macs(model, SHAPE)
        path = tmp / f"pruned_{rt}.onnx"
        export_onnx(model.eval(), SHAPE, path, cfg.export.opset)
        out[name] = {"path": path, "macs": macs, "params": params, "ratio": ratio}
        int8 = tmp / f"pruned_{rt}.int8.onnx"
        quantize(path, int8, "static", x.numpy()[:16], per_channel=True, activation_type=cfg.quantize.activation_type)
        out[name + " + INT8"] = {"path": int8, "macs": macs, "params": params}
    int8 = tmp / "dense.int8.onnx"
    quantize(out["dense"]["path"], int8, "static", x.numpy()[:16], per_channel=True,
             activation_type=cfg.quantize.activation_type)
    out["dense + INT8"] = {"path": int8, "macs": out["dense"]["macs"], "params": out["dense"]["params"]}
    return out


def run_latency(cfg: Config, archs: list[str], batches: list[int], target: float, round_to: list[int | None],
                out_dir: Path) -> dict[str, Any]:
    """Measure every variant of every architecture; writes latency.json and latency.md into ``out_dir``."""
    e = cfg.evaluate
    results: dict[str, Any] = {}
    for arch in archs:
        with tempfile.TemporaryDirectory() as tmp:
            variants = _variants(arch, target, round_to, Path(tmp), cfg)
            x = np.random.default_rng(0).normal(size=(max(batches), *SHAPE)).astype(np.float32)
            times = latency({n: v["path"] for n, v in variants.items()}, x, {f"b{b}": b for b in batches},
                            e.threads, e.warmup, e.repeats, e.rounds)
        dense = variants["dense"]
        rows = {}
        for name, v in variants.items():
            row = {"macs": v["macs"], "params": v["params"], "macs_reduction": dense["macs"] / v["macs"]}
            for b in batches:
                p50 = times[name][f"latency_ms_b{b}"]
                speedup = times["dense"][f"latency_ms_b{b}"] / p50
                row.update({f"p50_ms_b{b}": p50, f"p95_ms_b{b}": times[name][f"latency_p95_ms_b{b}"],
                            f"speedup_b{b}": speedup, f"efficiency_b{b}": speedup / row["macs_reduction"]})
            rows[name] = row
        results[arch] = rows
    report = {"target": target, "batches": batches, "threads": e.threads, "rounds": e.rounds, "repeats": e.repeats,
              "archs": results, "markdown": markdown(results, batches)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latency.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / "latency.md").write_text(report["markdown"])
    return report


def markdown(results: dict[str, Any], batches: list[int]) -> str:
    """One table per architecture."""
    lines = []
    for arch, rows in results.items():
        head = " | ".join(f"p50 b{b} (ms) | p95 b{b} | speedup b{b} | efficiency b{b}" for b in batches)
        lines += [f"**{arch}**", "", f"| variant | GMACs | M params | {head} |",
                  "|---|---:|---:|" + "---:|" * (4 * len(batches))]
        for name, r in rows.items():
            cells = " | ".join(f"{r[f'p50_ms_b{b}']:.2f} | {r[f'p95_ms_b{b}']:.2f} | {r[f'speedup_b{b}']:.2f}× | "
                               f"{r[f'efficiency_b{b}']:.2f}" for b in batches)
            lines.append(f"| {name} | {r['macs'] / 1e9:.2f} | {r['params'] / 1e6:.2f} | {cells} |")
        lines.append("")
    return "\n".join(lines)
