"""``python -m bench.complexity_structure``: complexity-aware training's accuracy gap, its structure or its training?

``[--seeds N] [--targets 4,8] [--split S] [--data digits]`` (issue 28).

On bench complexity's data and net (mnist1d and the 1D ResNet of ``bench.complexity_kwargs``, or ``--data digits``
and the 2D one), per seed and target:

- ``complexity_aware``: trained from scratch for E = ``bench.complexity_epochs`` epochs to the MACs target, as bench
  complexity runs it; the structure it found;
- ``l2_kd``: bench complexity's best prune-after-training recipe at the MACs complexity-aware achieved (dense E1
  epochs, l2 one-shot with BatchNorm recalibration, E − E1 epochs of fine-tuning with distillation); its structure;
- ``*_from_scratch``: each of the two structures with every weight initialised anew and trained E epochs as the dense
  model is (same optimizer, learning rate, batch size, seed);
- with ``--split S``, ``search_then_retrain``: the same budget of E epochs as every other method — complexity-aware
  training for S epochs to the target, then its structure initialised anew and trained E − S epochs.

If complexity-aware's structure trained from scratch does as well as l2's, the structure is not what loses the
accuracy: its training is. Per-stage widths (channels kept in each stage) are reported beside. Writes
reports/bench/complexity_structure[_digits].{json,md}.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import logging
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.complexity import DATASETS, _stages
from bench.config import BenchConfig, main, write_report
from bench.criteria import _ci95, _prune_config, load_bench_data
from pruning.allocation.uniform import search_ratio
from pruning.config import Config
from pruning.counting import count_macs
from pruning.methods import Context, channel
from pruning.methods.complexity_aware import method as complexity
from pruning.training import Distill, Optim, evaluate, fit, reinitialise
from pruning.zoo import build_model

log = logging.getLogger(__name__)
VARIANTS = ("complexity_aware", "complexity_aware_from_scratch", "l2_kd", "l2_kd_from_scratch", "search_then_retrain")


def _structure(net: torch.nn.Module, kwargs: dict[str, Any]) -> list[int]:
    return _stages([{"layer": n, "found": m.out_channels} for n, m in net.named_modules()
                    if isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d)], kwargs)


def _from_scratch(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The same structure with every weight initialised anew (a copy: :func:`pruning.training.reinitialise`)."""
    return reinitialise(copy.deepcopy(net), seed)


def _job(spec: dict[str, Any]) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    b = BenchConfig.model_validate(spec["bench"])
    data = load_bench_data(b, spec["data"])
    seed, target, kwargs = spec["seed"], spec["target"], b.complexity_kwargs
    epochs, dense_epochs = b.complexity_epochs, b.complexity_dense_epochs

    def build() -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(DATASETS[spec["data"]], kwargs, data.input_shape, data.num_classes)

    ctx = Context(data=data, seed=seed, device="cpu", build=build, latency_table=Path("unused.json"), opset=17)
    dense_macs = count_macs(build(), data.input_shape)[0]
    out = []

    def record(variant: str, net: torch.nn.Module) -> None:
        macs = count_macs(net, data.input_shape)[0]
        out.append({"variant": variant, "seed": seed, "target": target, "achieved": dense_macs / macs,
                    "accuracy": evaluate(net, data.test)[0], "stages": _structure(net, kwargs)})

    ca, _, _ = complexity.train(build(), complexity.Config(epochs=epochs, target_macs_reduction=target), ctx)
    record("complexity_aware", ca)
    achieved = dense_macs / count_macs(ca, data.input_shape)[0]
    base = build()
    fit(base, data.train, Optim(dense_epochs, b.batch_size, b.lr), seed, f"dense E1 seed {seed}")
    pcfg = _prune_config(b.methods["l2_kd"], b, 1)
    ratio = search_ratio(lambda r: channel.macs_after(base, data.input_shape, pcfg, r, data.train, seed), dense_macs,
                         achieved)
    l2 = copy.deepcopy(base)
    torch.manual_seed(seed)
    channel.run_schedule(l2, pcfg, ratio, ctx)
    fit(l2, data.train, Optim(epochs - dense_epochs, b.batch_size, b.finetune_lr), seed, "l2_kd",
        distill=Distill(base, 4.0, 0.7))
    record("l2_kd", l2)
    for name, net in (("complexity_aware_from_scratch", ca), ("l2_kd_from_scratch", l2)):
        fresh = _from_scratch(net, seed)
        fit(fresh, data.train, Optim(epochs, b.batch_size, b.lr), seed, name)
        record(name, fresh)
    if spec.get("split"):  # the same budget: the search for `split` epochs, the found structure retrained for the rest
        found, _, _ = complexity.train(build(), complexity.Config(epochs=spec["split"], target_macs_reduction=target),
                                       ctx)
        fresh = _from_scratch(found, seed)
        fit(fresh, data.train, Optim(epochs - spec["split"], b.batch_size, b.lr), seed, "search + retrain")
        record("search_then_retrain", fresh)
    return out


def markdown(records: list[dict[str, Any]], seeds: int, b: BenchConfig, data: str = "mnist1d") -> str:
    lines = [f"{data}: complexity-aware's structure against l2's, each also trained from scratch ({seeds} seed(s), "
             f"{b.complexity_epochs} epochs for every model; accuracy mean ± 95 % CI; stages: channels kept per "
             "stage, seed 0).", "", "| target | variant | MACs ÷ | accuracy | stages |", "|---|---|---:|---:|---|"]
    for target in sorted({r["target"] for r in records}):
        for variant in VARIANTS:
            rs = [r for r in records if r["target"] == target and r["variant"] == variant]
            if not rs:
                continue
            acc, ci = _ci95([r["accuracy"] for r in rs])
            achieved = sum(r["achieved"] for r in rs) / len(rs)
            first = min(rs, key=lambda r: r["seed"])
            lines.append(f"| {target:g}× | {variant} | {achieved:.2f} | {acc:.1%} ± {ci:.1%} | {first['stages']} |")
    return "\n".join(lines)


def run(cfg: Config, b: BenchConfig, seeds: int, targets: list[float], workers: int, out_dir: Path,
        split: int | None = None, data: str = "mnist1d") -> dict[str, Any]:
    bench = b.model_dump(mode="json")
    specs = [{"seed": s, "target": t, "bench": bench, "split": split, "data": data} for t in targets
             for s in range(seeds)]
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for fut in cf.as_completed([pool.submit(_job, s) for s in specs]):
            records += fut.result()
            log.info("bench complexity_structure: %d records of %d runs (%.0f s)", len(records), len(specs),
                     time.perf_counter() - start)
    md = markdown(records, seeds, b, data)
    result = {"data": data, "seeds": seeds, "targets": targets, "split": split, "records": records, "markdown": md,
              "seconds": time.perf_counter() - start}
    name = "complexity_structure" + ("" if data == "mnist1d" else f"_{data}")
    write_report(out_dir, name, result, md)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.complexity_structure", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--targets", default="4,8", help="MACs reductions, comma-separated")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    parser.add_argument("--split", type=int, default=None,
                        help="also: the search for this many epochs, the found structure retrained for the rest")
    parser.add_argument("--data", choices=sorted(DATASETS), default="mnist1d", help="the benchmark's data and ResNet")
    args = parser.parse_args()
    sys.exit(main(lambda cfg, b, out: print(run(cfg, b, max(1, args.seeds),
                                                [float(t) for t in args.targets.split(",") if t],
                                                max(1, args.workers), out, args.split, args.data)["markdown"]),
                  args.params))
