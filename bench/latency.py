"""``python -m bench.latency``: is the pruned model as much faster as it is smaller, on ONNX Runtime?

For each architecture (ImageNet shape 3x224x224, random init: latency does not depend on the weights' values), one
process builds and times, alternately (``bench.latency_rounds`` rounds, medians):

- dense, with ORT's full graph optimisation (the shipped setting) and with basic optimisation only (the factor of the
  layout optimisations: NCHWc convolutions, fusions), and dense + INT8 (INT8 alone);
- pruned by MACs allocation (torch-pruning's uniform l2 ratio searched for the MACs target), for each channel
  rounding in ``--round-to`` (pruning alone, the plain torch-pruning baseline at ``none``);
- pruned by latency allocation at the same MACs (which allocation is faster at equal MACs);
- pruned by latency allocation to ``--target`` measured speedup, and that model + INT8 (both).

Efficiency = speedup / MACs reduction: 1.0 means the model got exactly as much faster as it got cheaper. The latency
allocation measures its table at batch ``--alloc-batch`` and ``evaluate.threads``; the table is kept in
``paths.latency_table`` and reused by later runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp

from bench.config import BenchConfig, main
from bench.readme import markers, update_readme
from pruning import dependency
from pruning.allocation import latency as lat
from pruning.allocation import latency_table as lt
from pruning.allocation.uniform import search_ratio
from pruning.config import Config
from pruning.counting import count_macs
from pruning.data import Data, Split
from pruning.errors import ConfigError, GraphTraceError, PruningError
from pruning.methods import channel
from pruning.runtime.export import export_onnx
from pruning.runtime.quantize import quantize
from pruning.runtime.timing import Protocol, latency
from pruning.zoo import build_model

log = logging.getLogger(__name__)

SHAPE = (3, 224, 224)
README_START, README_END = markers("latency")
# the ImageNet-shape zoo entries under the names users know them by
ALIASES = {"mobilenetv2": "mobilenetv2_imagenet"}


def _macs_allocation(dense: torch.nn.Module, target: float, round_to: int | None, split: Split) -> torch.nn.Module:
    pcfg = channel.Config(criterion="l2", ratio=None, target_macs_reduction=target, round_to=round_to,
                          bn_recalibration=False, calibration_batches=1, step_finetune_epochs=0)
    model = copy.deepcopy(dense)
    ratio = search_ratio(lambda r: channel.macs_after(model, SHAPE, pcfg, r, split, 0), count_macs(model, SHAPE)[0],
                         target)
    _ = channel.run_schedule(model, Data(split, Split(split.x[:4], split.y[:4]), SHAPE, 1000), pcfg, ratio, seed=0)
    return model


def _latency_allocation(dense: torch.nn.Module, table: lt.LatencyTable, step: int, cfg: Config, *,
                        target_macs: float | None = None, target_speedup: float | None = None
                        ) -> tuple[torch.nn.Module, dict[str, Any]]:
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    ignored = dependency.ignored_modules(dense, [])
    batch, threads, opset = table.batch, table.threads, cfg.export.opset
    alloc = lat.allocate(dense, SHAPE, imp, ignored, table, step=step, max_layer_ratio=0.9,
                         target_macs_reduction=target_macs, target_speedup=target_speedup,
                         measure=lambda r: lt.measure_pruned(dense, SHAPE, r, [], batch, threads, opset),
                         strict=False, count_macs=lambda r: lt.pruned_macs(dense, SHAPE, r, []),
                         profile=lambda r: lt.profile_pruned(dense, SHAPE, r, [], batch, threads, opset))
    model = copy.deepcopy(dense)
    twin = dict(zip(dense.modules(), model.modules(), strict=True))
    pruner, _ = dependency.build_pruner(model, SHAPE, imp, ratio=0.0, scope="uniform", iterative_steps=1, round_to=None,
                                     max_layer_ratio=1.0, ignored=dependency.ignored_modules(model, []),
                                     ratio_dict={twin[m]: r for m, r in alloc.ratios.items()})
    dependency.prune_step(pruner, model)
    return model, alloc.report


def _variants(arch: str, cfg: Config, target: float, round_to: list[int | None], step: int, alloc_batch: int,
              tmp: Path, skipped: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Build, prune, export (and quantize) every variant of ``arch``; returns name -> {path, macs, params, ...}.

    A MACs allocation that cannot reach the target is left out, with the reason in ``skipped``.
    """
    torch.manual_seed(0)
    dense = build_model(arch, {}, SHAPE, 1000).eval()
    x = torch.randn(32, *SHAPE)  # calibration / BatchNorm data: random, like the weights
    split = Split(x, torch.zeros(32, dtype=torch.long))
    calibration = x.numpy()[:16]
    out: dict[str, dict[str, Any]] = {}

    def add(name: str, model: torch.nn.Module, **extra: Any) -> Path:
        macs, params = count_macs(model, SHAPE)
        path = tmp / f"{len(out)}.onnx"
        export_onnx(model.eval(), SHAPE, path, cfg.export.opset)
        out[name] = {"path": path, "macs": macs, "params": params, **extra}
        return path

    def add_int8(name: str, of: str) -> None:
        path = tmp / f"{len(out)}.int8.onnx"
        quantize(out[of]["path"], path, "static", calibration, per_channel=True,
                 activation_type=cfg.quantize.activation_type)
        out[name] = {**out[of], "path": path}

    add("dense", dense)
    out["dense, ORT basic optimisation"] = {**out["dense"], "level": "basic"}
    add_int8("dense + INT8", "dense")
    for rt in round_to:
        try:
            model = _macs_allocation(dense, target, rt, split)
        except GraphTraceError as exc:  # e.g. round_to 16 on MobileNetV2's 16-channel layers: no ratio reaches it
            log.warning("%s, MACs allocation with round_to %s: %s", arch, rt, exc)
            skipped[f"pruned, MACs allocation, round_to {rt}"] = str(exc)
            continue
        add(f"pruned, MACs allocation, round_to {rt}", model, round_to=rt)
    table = lt.LatencyTable.load(cfg.paths.latency_table, alloc_batch, cfg.evaluate.threads)
    try:
        model, report = _latency_allocation(dense, table, step, cfg, target_macs=target)
        add(f"pruned, latency allocation, {target:g}x MACs", model, allocation=report)
        model, report = _latency_allocation(dense, table, step, cfg, target_speedup=target)
        name = f"pruned, latency allocation, {target:g}x speedup target"
        add(name, model, allocation=report)
        add_int8(f"{name} + INT8", name)
    finally:
        table.save(cfg.paths.latency_table)
    return out


def run_latency(cfg: Config, b: BenchConfig, archs: list[str], batches: list[int], target: float,
                round_to: list[int | None], out_dir: Path, step: int = 16, alloc_batch: int = 1,
                readme: Path | None = None) -> dict[str, Any]:
    """Measure every variant of every architecture; writes latency.json and latency.md into ``out_dir`` (and the
    tables into ``readme`` between its bench:latency markers)."""
    results: dict[str, Any] = {}
    skipped: dict[str, dict[str, str]] = {}
    report: dict[str, Any] = {}
    for name in archs:
        arch = ALIASES.get(name, name)
        skipped[name] = {}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                variants = _variants(arch, cfg, target, round_to, step, alloc_batch, Path(tmp), skipped[name])
            except PruningError as exc:  # a target out of reach for the latency allocation
                raise ConfigError(f"bench latency, {name}: {exc}") from None
            x = np.random.default_rng(0).normal(size=(max(batches), *SHAPE)).astype(np.float32)
            times = latency({n: v["path"] for n, v in variants.items()}, x, {f"b{bs}": bs for bs in batches},
                            cfg.evaluate.threads, Protocol(b.latency_warmup, b.latency_repeats, b.latency_rounds),
                            levels={n: v["level"] for n, v in variants.items() if "level" in v})
        dense = variants["dense"]
        rows = {}
        for vname, v in variants.items():
            row = {"macs": v["macs"], "params": v["params"], "macs_reduction": dense["macs"] / v["macs"]}
            for bs in batches:
                p50 = times[vname][f"latency_ms_b{bs}"]
                speedup = times["dense"][f"latency_ms_b{bs}"] / p50
                row.update({f"p50_ms_b{bs}": p50, f"p95_ms_b{bs}": times[vname][f"latency_p95_ms_b{bs}"],
                            f"speedup_b{bs}": speedup, f"efficiency_b{bs}": speedup / row["macs_reduction"]})
            if "allocation" in v:
                row["allocation"] = v["allocation"]
            rows[vname] = row
        results[name] = rows
        report = _write(out_dir, {"target": target, "batches": batches, "threads": cfg.evaluate.threads,
                                  "rounds": b.latency_rounds, "repeats": b.latency_repeats, "step": step,
                                  "alloc_batch": alloc_batch, "archs": results, "skipped": skipped,
                                  "markdown": markdown(results, batches, skipped)})
        log.info("bench latency: %s done\n%s", name, markdown({name: rows}, batches, skipped))
    if readme is not None:
        update_readme(report["markdown"], readme, (README_START, README_END))
    return report


def _write(out_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """latency.json and latency.md, rewritten after every architecture (a long run keeps what it measured)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latency.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / "latency.md").write_text(report["markdown"])
    return report


def markdown(results: dict[str, Any], batches: list[int], skipped: dict[str, dict[str, str]] | None = None) -> str:
    """One table per architecture, then the variants that could not be built."""
    lines = []
    for arch, rows in results.items():
        head = " | ".join(f"p50 b{b} (ms) | p95 b{b} | speedup b{b} | efficiency b{b}" for b in batches)
        lines += [f"**{arch}**", "", f"| variant | GMACs | M params | MACs cut | {head} |",
                  "|---|---:|---:|---:|" + "---:|" * (4 * len(batches))]
        for name, r in rows.items():
            cells = " | ".join(f"{r[f'p50_ms_b{b}']:.2f} | {r[f'p95_ms_b{b}']:.2f} | {r[f'speedup_b{b}']:.2f}× | "
                               f"{r[f'efficiency_b{b}']:.2f}" for b in batches)
            lines.append(f"| {name} | {r['macs'] / 1e9:.2f} | {r['params'] / 1e6:.2f} | {r['macs_reduction']:.2f}× "
                         f"| {cells} |")
        lines.append("")
        for name, why in (skipped or {}).get(arch, {}).items():
            lines += [f"Not built: {name}: {why}", ""]
    return "\n".join(lines)


def _cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--arch", default="resnet50,mobilenetv2", help="comma-separated ImageNet-shape zoo names")
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--target", type=float, default=2.0, help="MACs reduction / speedup target of the variants")
    parser.add_argument("--round-to", default="none,8,16", help="channel roundings of the MACs allocation")
    parser.add_argument("--step", type=int, default=16, help="channel step of the latency allocation")
    parser.add_argument("--alloc-batch", type=int, default=1, help="batch size the latency table is measured at")
    parser.add_argument("--no-readme", action="store_true", help="do not write README.md's tables")
    args = parser.parse_args()
    try:
        batches = [int(v) for v in args.batch.split(",")]
        roundings = [None if v.strip().lower() == "none" else int(v) for v in args.round_to.split(",")]
    except ValueError:
        parser.error(f"--batch {args.batch!r} / --round-to {args.round_to!r}: comma-separated integers")
    return main(lambda cfg, b, out: print(run_latency(
        cfg, b, args.arch.split(","), batches, args.target, roundings, out, args.step, args.alloc_batch,
        None if args.no_readme else Path("README.md"))["markdown"]), args.params)


if __name__ == "__main__":
    sys.exit(_cli())
