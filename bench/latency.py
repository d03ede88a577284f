"""``python -m bench.latency``: is the pruned model as much faster as it is smaller, on ONNX Runtime?

For each architecture (``--arch``: an ImageNet-shape zoo name, a family of :mod:`bench.families` -- EfficientNet-B0,
ResNeXt, DenseNet, ShuffleNetV2 -- or the user's ``module:callable``; ``--input-shape`` 3x224x224 and ``--classes`` 1000
by default; random init: latency does not depend on the weights' values), one process builds and times, alternately
(``bench.latency_rounds`` rounds, medians):

- dense, with ORT's full graph optimisation (the shipped setting) and with basic optimisation only (the factor of the
  layout optimisations: NCHWc convolutions, fusions), and dense + INT8 (INT8 alone);
- pruned by MACs allocation (torch-pruning's uniform l2 ratio searched for the MACs target), for each channel
  rounding in ``--round-to`` (pruning alone, the plain torch-pruning baseline at ``none``);
- pruned by latency allocation at the same MACs (which allocation is faster at equal MACs);
- pruned by latency allocation to ``--target`` measured speedup, and that model + INT8 (both).

Each check of ``summary`` reads a figure timed in alternation with its reference alone (the protocol the search
accepts a candidate by, with its confidence interval), the table the lineup's: the speedup-target model against
dense, the latency allocation at equal MACs against the fastest MACs allocation, and INT8 against the pruned fp32
model (which decides which of the two ships).

Efficiency = speedup / MACs reduction: 1.0 means the model got exactly as much faster as it got cheaper. The latency
allocation measures its table at batch ``--alloc-batch`` and ``evaluate.threads``; the table is kept in
``paths.latency_table`` and reused by later runs. A variant torch-pruning cannot build (a MACs target out of reach,
an architecture it cannot trace or prune, such as ShuffleNetV2's channel shuffle) is listed under ``skipped`` with the
one-line reason, and the run goes on.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp

from bench.config import BenchConfig, main
from bench.families import FAMILIES
from bench.latency_report import at_macs_row, markdown, ship, target_row, write
from pruning import dependency
from pruning.allocation import latency as lat
from pruning.allocation import latency_table as lt
from pruning.allocation.uniform import search_ratio
from pruning.config import Config
from pruning.counting import count_macs
from pruning.data import Data, Split
from pruning.errors import ConfigError, GraphTraceError, ModelError, PruningError
from pruning.methods import Context, channel
from pruning.progress import steps as progress_steps
from pruning.runtime.export import export_onnx
from pruning.runtime.int8_select import select
from pruning.runtime.quantize import quantize
from pruning.runtime.timing import Protocol, latency, paired_speedup
from pruning.zoo import ZOO, build_model, check_builder, resolve_callable

log = logging.getLogger(__name__)

SHAPE = (3, 224, 224)  # the default --input-shape
CLASSES = 1000  # the default --classes
ARCHS = "resnet50,mobilenetv2,efficientnet_b0_like,resnext_like,densenet_like,shufflenetv2_like"  # the default --arch
# the ImageNet-shape zoo entries under the names users know them by
ALIASES = {"mobilenetv2": "mobilenetv2_imagenet"}
PROBE_RATIO = 0.25  # one uniform trial at this ratio tells whether torch-pruning can prune the architecture at all

Builder = Callable[[tuple[int, ...], int], torch.nn.Module]  # (input shape, classes) -> dense model


def resolve_arch(entry: str) -> Builder:
    """The builder of one ``--arch`` entry: a zoo name (or an alias), a family of bench/families.py, or the user's
    ``module:callable`` (imported now, trusted code; called with ``num_classes`` only). ConfigError naming the entry."""
    name = ALIASES.get(entry.strip(), entry.strip())
    if name in FAMILIES:
        family = FAMILIES[name]
        return lambda shape, classes: family(num_classes=classes)
    if ":" in name:
        try:
            check_builder(name, resolve_callable(name))
        except ModelError as exc:
            raise ConfigError(f"bench latency --arch entry {entry!r}: {exc}") from None
        return lambda shape, classes: build_model(name, {"num_classes": classes}, shape, classes)
    if name in ZOO:
        return lambda shape, classes: build_model(name, {}, shape, classes)
    raise ConfigError(f"bench latency --arch entry {entry!r} is not a zoo name ({', '.join([*ZOO, *ALIASES])}), a "
                      f"family ({', '.join(FAMILIES)}) or a module:callable")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _macs_allocation(dense: torch.nn.Module, target: float, round_to: int | None, split: Split,
                     num_classes: int = CLASSES) -> torch.nn.Module:
    """A copy of ``dense`` pruned by torch-pruning's uniform l2 ratio searched for ``target`` MACs reduction; the
    input shape is the calibration data's (``split``)."""
    shape = tuple(split.x.shape[1:])
    pcfg = channel.Config(criterion="l2", ratio=None, target_macs_reduction=target, round_to=round_to,
                          bn_recalibration=False, calibration_batches=1, step_finetune_epochs=0)
    model = copy.deepcopy(dense)
    ratio = search_ratio(lambda r: channel.macs_after(model, shape, pcfg, r, split, 0), count_macs(model, shape)[0],
                         target)
    data = Data(split, Split(split.x[:4], split.y[:4]), shape, num_classes)
    ctx = Context(data=data, seed=0, device="cpu", build=lambda: copy.deepcopy(dense), latency_table=Path("unused.json"),
                  opset=17)
    _ = channel.run_schedule(model, pcfg, ratio, ctx)
    return model


def check_prunable(dense: torch.nn.Module, split: Split) -> None:
    """GraphTraceError (torch-pruning's own failure, named) when a plain uniform ratio cannot prune ``dense``: the MACs
    target search would report that as "out of reach at ratio 0.000", since it counts every failure as too far."""
    pcfg = channel.Config(criterion="l1", ratio=PROBE_RATIO, round_to=None, bn_recalibration=False,
                          calibration_batches=1, step_finetune_epochs=0)
    channel.macs_after(dense, tuple(split.x.shape[1:]), pcfg, PROBE_RATIO, split, 0)


def _latency_allocation(dense: torch.nn.Module, table: lt.LatencyTable, step: int, cfg: Config, *,
                        target_macs: float | None = None, target_speedup: float | None = None,
                        shape: tuple[int, ...] = SHAPE) -> tuple[torch.nn.Module, dict[str, Any]]:
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    ignored = dependency.ignored_modules(dense, [])
    yardstick = lt.Yardstick(dense, shape, [], table.batch, table.threads, cfg.export.opset)
    alloc = lat.allocate(dense, shape, imp, ignored, table, step=step, max_layer_ratio=0.9,
                         target_macs_reduction=target_macs, target_speedup=target_speedup,
                         measure=yardstick.speedup, strict=False, count_macs=yardstick.macs, profile=yardstick.profile)
    model = copy.deepcopy(dense)
    twin = dict(zip(dense.modules(), model.modules(), strict=True))
    pruner, _ = dependency.build_pruner(model, shape, imp, ratio=0.0, scope="uniform", iterative_steps=1, round_to=None,
                                     max_layer_ratio=1.0, ignored=dependency.ignored_modules(model, []),
                                     ratio_dict={twin[m]: r for m, r in alloc.ratios.items()})
    dependency.prune_step(pruner, model)
    return model, alloc.report


def _variants(build: Builder, shape: tuple[int, ...], classes: int, cfg: Config, target: float,
              round_to: list[int | None], step: int, alloc_batch: int, tmp: Path, skipped: dict[str, str]
              ) -> dict[str, dict[str, Any]]:
    """Build, prune, export (and quantize) every variant of one architecture; returns name -> {path, macs, params, ...}.

    A variant that cannot be built (a MACs target out of reach, a network torch-pruning cannot prune) is left out, with
    the one-line reason in ``skipped``; the dense ones always are built.
    """
    torch.manual_seed(0)
    dense = build(shape, classes).eval()
    x = torch.randn(32, *shape)  # calibration / BatchNorm data: random, like the weights
    split = Split(x, torch.zeros(32, dtype=torch.long))
    calibration = x.numpy()[:16]
    out: dict[str, dict[str, Any]] = {}

    def add(name: str, model: torch.nn.Module, **extra: Any) -> Path:
        macs, params = count_macs(model, shape)
        path = tmp / f"{len(out)}.onnx"
        export_onnx(model.eval(), shape, path, cfg.export.opset)
        out[name] = {"path": path, "macs": macs, "params": params, **extra}
        log.info("bench latency: %s built and exported (%.3g M MACs)", name, macs / 1e6)
        return path

    def add_int8(name: str, of: str, selected: bool = False) -> None:
        path = tmp / f"{len(out)}.int8.onnx"
        if not selected:  # every operator ORT can quantize (INT8 alone)
            quantize(out[of]["path"], path, "static", calibration, per_channel=True,
                     activation_type=cfg.quantize.activation_type)
            out[name] = {**out[of], "path": path}
            return
        # the pipeline's per-operator selection (quantize.select: auto): the fastest measured operator set
        sel = select(out[of]["path"], path, calibration, per_channel=True, activation_type=cfg.quantize.activation_type,
                     threads=cfg.evaluate.threads, protocol=Protocol(2, 10, 3))
        out[name] = {**out[of], "path": path, "int8_selection": sel.report()}
        log.info("bench latency: %s quantized", name)

    def skip(name: str, exc: Exception) -> None:
        log.warning("%s: %s", name, exc)
        skipped[name] = _one_line(exc)

    add("dense", dense)
    out["dense, ORT basic optimisation"] = {**out["dense"], "level": "basic"}
    add_int8("dense + INT8", "dense")
    try:
        check_prunable(dense, split)
    except GraphTraceError as exc:  # e.g. ShuffleNetV2's channel shuffle: no allocation can prune it
        skip("pruned (every allocation)", exc)
        return out
    for rt in round_to:
        try:
            model = _macs_allocation(dense, target, rt, split, classes)
        except GraphTraceError as exc:  # e.g. round_to 16 on MobileNetV2's 16-channel layers: no ratio reaches it
            skip(f"pruned, MACs allocation, round_to {rt}", exc)
            continue
        add(f"pruned, MACs allocation, round_to {rt}", model, round_to=rt)
    table = lt.LatencyTable.load(cfg.paths.latency_table, alloc_batch, cfg.evaluate.threads)
    name = at_macs_row(target)
    try:
        model, report = _latency_allocation(dense, table, step, cfg, target_macs=target, shape=shape)
        add(name, model, allocation=report)
        name = target_row(target)
        model, report = _latency_allocation(dense, table, step, cfg, target_speedup=target, shape=shape)
        add(name, model, allocation=report)
        add_int8(f"{name} + INT8", name, selected=True)
    except PruningError as exc:  # a target out of reach, or a network the allocation cannot prune
        skip(name, exc)
    finally:
        table.save(cfg.paths.latency_table)
    return out


def run_latency(cfg: Config, b: BenchConfig, archs: list[str], batches: list[int], target: float,
                round_to: list[int | None], out_dir: Path, step: int = 16, alloc_batch: int = 1,
                shape: tuple[int, ...] | None = None,
                num_classes: int = CLASSES) -> dict[str, Any]:
    """Measure every variant of every architecture (``archs``: --arch entries, all resolved before anything runs) at
    input ``shape`` (default :data:`SHAPE`); writes latency.json and latency.md into ``out_dir``."""
    shape = tuple(shape or SHAPE)
    builders = {name: resolve_arch(name) for name in archs}  # a misspelt entry fails now, not an hour in
    results: dict[str, Any] = {}
    skipped: dict[str, dict[str, str]] = {}
    report: dict[str, Any] = {}
    with progress_steps(len(builders), "bench latency", log) as advance:
        for name, build in builders.items():
            skipped[name] = {}
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    variants = _variants(build, shape, num_classes, cfg, target, round_to, step, alloc_batch, Path(tmp),
                                         skipped[name])
                except PruningError as exc:  # the user's builder failed, or its model does not export
                    raise ConfigError(f"bench latency, {name}: {_one_line(exc)}") from None
                log.info("bench latency: %s: timing %d variants at batch %s", name, len(variants),
                         ", ".join(map(str, batches)))
                x = np.random.default_rng(0).normal(size=(max(batches), *shape)).astype(np.float32)
                protocol = Protocol(b.latency_warmup, b.latency_repeats, b.latency_rounds)
                times = latency({n: v["path"] for n, v in variants.items()}, x, {f"b{bs}": bs for bs in batches},
                                cfg.evaluate.threads, protocol,
                                levels={n: v["level"] for n, v in variants.items() if "level" in v})
                pairs = _pairs(variants, times, target, x[:1], cfg.evaluate.threads, protocol)
            dense = variants["dense"]
            rows = {}
            for vname, v in variants.items():
                row = {"macs": v["macs"], "params": v["params"], "macs_reduction": dense["macs"] / v["macs"]}
                for bs in batches:
                    p50 = times[vname][f"latency_ms_b{bs}"]
                    speedup = times["dense"][f"latency_ms_b{bs}"] / p50
                    row.update({f"p50_ms_b{bs}": p50, f"p95_ms_b{bs}": times[vname][f"latency_p95_ms_b{bs}"],
                                f"speedup_b{bs}": speedup, f"efficiency_b{bs}": speedup / row["macs_reduction"]})
                for key in ("allocation", "int8_selection"):
                    if key in v:
                        row[key] = v[key]
                rows[vname] = row
            for vname, figures in pairs.items():
                rows[vname].update(figures)
            ship(rows, target, cfg.evaluate.int8_min_speedup)
            results[name] = rows
            report = write(out_dir, {"target": target, "batches": batches, "threads": cfg.evaluate.threads,
                                      "rounds": b.latency_rounds, "repeats": b.latency_repeats, "step": step,
                                      "alloc_batch": alloc_batch, "input_shape": list(shape), "classes": num_classes,
                                      "archs": results, "skipped": skipped,
                                      "markdown": markdown(results, batches, skipped)})
            log.info("bench latency: %s done\n%s", name, markdown({name: rows}, batches, skipped))
            advance(name)
    return report


def _pairs(variants: dict[str, dict[str, Any]], times: dict[str, dict[str, float]], target: float, x: np.ndarray,
           threads: int, protocol: Protocol) -> dict[str, dict[str, dict[str, Any]]]:
    """The figures the issue's checks read, each timed in alternation with its reference alone
    (:func:`paired_speedup`, the protocol the search accepts a candidate by, with its interval): in the ten-model
    lineup a small net's ratio moves by a tenth either way from run to run (docs/results/latency.md); the table keeps
    the lineup's. Row -> {key: figures}:

    - the speedup-target model against dense (``paired_b1``);
    - the latency allocation at the MACs target against the lineup's fastest MACs allocation, named in ``against``
      (``paired_vs_macs_b1``; two models about as fast as each other, where a lineup's 3 % is noise);
    - its INT8 model against it (``paired_vs_fp32_b1``): what decides which of the two ships.
    """
    speedup_row, at_macs = target_row(target), at_macs_row(target)
    macs_rows = [n for n in variants if n.startswith("pruned, MACs allocation")]
    checks = [(speedup_row, "paired_b1", "dense"), (f"{speedup_row} + INT8", "paired_vs_fp32_b1", speedup_row)]
    if macs_rows:
        checks.append((at_macs, "paired_vs_macs_b1", min(macs_rows, key=lambda n: times[n]["latency_ms_b1"])))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row, key, against in checks:
        if row in variants:
            found = paired_speedup(variants[against]["path"], variants[row]["path"], x, threads, protocol)
            out.setdefault(row, {})[key] = {**found.as_dict(), "against": against}
    return out


def _ints(parser: argparse.ArgumentParser, flag: str, text: str, allow_none: bool = False) -> list[int | None]:
    try:
        return [None if allow_none and v.strip().lower() == "none" else int(v) for v in text.split(",")]
    except ValueError:
        parser.error(f"{flag} {text!r}: comma-separated integers{' or none' if allow_none else ''}")


def _cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--arch", default=ARCHS, help="comma-separated: zoo names (ImageNet shape: resnet50, "
                        f"mobilenetv2), families of bench/families.py ({', '.join(FAMILIES)}) or module:callable "
                        "(your code, called with num_classes=)")
    parser.add_argument("--input-shape", default=",".join(map(str, SHAPE)), help="per-sample input shape, C,H,W")
    parser.add_argument("--classes", type=int, default=CLASSES, help="classifier width")
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--target", type=float, default=2.0, help="MACs reduction / speedup target of the variants")
    parser.add_argument("--round-to", default="none,8,16", help="channel roundings of the MACs allocation")
    parser.add_argument("--step", type=int, default=16, help="channel step of the latency allocation")
    parser.add_argument("--alloc-batch", type=int, default=1, help="batch size the latency table is measured at")
    args = parser.parse_args()
    batches = _ints(parser, "--batch", args.batch)
    roundings = _ints(parser, "--round-to", args.round_to, allow_none=True)
    shape = tuple(_ints(parser, "--input-shape", args.input_shape))
    if any(v is None or v < 1 for v in [*batches, *shape]) or args.classes < 1:
        parser.error("--batch, --input-shape and --classes take positive integers")
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    return main(lambda cfg, b, out: print(run_latency(
        cfg, b, archs, batches, args.target, roundings, out, args.step, args.alloc_batch,
        shape, args.classes)["markdown"]), args.params)


if __name__ == "__main__":
    sys.exit(_cli())
