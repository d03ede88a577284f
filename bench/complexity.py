"""``python -m pruning bench complexity [--quick] [--workers N] [--data mnist1d|digits]``: complexity-aware training
(Guenter & Sideris 2024) against prune-after-training, at matched achieved MACs and the same total epochs.

On mnist1d (generated offline) with a 1D ResNet of 3 stages x 3 blocks (``bench.complexity_kwargs``), or with
``--data digits`` on scikit-learn's 8x8 digit images with the 2D ResNet of the same stages, per seed:

- complexity-aware from scratch as the pipeline runs it by default: the search for E − R epochs, its strength steered
  by dual ascent to each of ``bench.targets`` (``target_macs_reduction``), then the structure it found initialised
  anew and trained R = ``bench.complexity_retrain_epochs`` epochs (``retrain_epochs``); what it achieves is the MACs
  every other method is given;
- ``search_only``: the search for all E epochs, its own weights shipped (the paper's setting, ``retrain_epochs: 0``);
- ``l2_kd`` (the pipeline's best prune-after-training configuration: l2, uniform, BatchNorm recalibration, knowledge
  distillation) and ``plain_tp`` (torch-pruning as it comes: l2, no recalibration, no distillation), both from a dense
  model trained E1 = ``bench.complexity_dense_epochs`` epochs, pruned one-shot to that MACs and fine-tuned E − E1;
- ablations at 4x (with the retrain, as the default): unit gates only, block gates only, parameters-weighted
  complexity (``flops_vs_params: 1``);
- the default knobs (strength 1, no MACs target): what a user gets without choosing anything;
- the dense model trained E epochs (its accuracy, and the wall time complexity-aware training is compared with).

Runs go to a pool of worker processes (``--workers``, one torch thread each; ``concurrent.futures``). Writes
reports/bench/complexity[_digits].{json,md,png} (the .md links the .png beside it); one MLflow run with every figure.
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

import numpy as np
import torch

from bench.config import BenchConfig, main, write_report
from bench.criteria import _ci95, _prune_config, load_bench_data
from pruning.allocation.uniform import search_ratio
from pruning.config import Config
from pruning.counting import count_macs
from pruning.methods import Context, channel
from pruning.methods.complexity_aware import method as complexity
from pruning.training import Distill, Optim, evaluate, fit
from pruning.zoo import build_model

log = logging.getLogger(__name__)
FIGURE = "\n![complexity-aware vs prune-after-training](complexity.png)\n"  # complexity.md's figure, beside it
ABLATIONS = {"units only": {"block_gates": False}, "blocks only": {"unit_gates": False},
             "params-weighted": {"flops_vs_params": 1.0}}
ABLATION_TARGET = 4.0
DATASETS = {"mnist1d": "resnet1d", "digits": "resnet"}  # --data: the ResNet of bench.complexity_kwargs for its inputs


def _stages(structure: list[dict[str, Any]], kwargs: dict[str, Any]) -> list[int]:
    """Channels kept per stage (the stage's conv2 outputs, summed over its blocks that are left)."""
    blocks = kwargs.get("blocks", [2, 2, 2])
    found = {r["layer"]: r["found"] for r in structure}  # conv1 of each block, 1D or 2D
    out, i = [], 0
    for n in blocks:
        out.append(sum(found.get(f"layers.{i + k}.conv1", 0) for k in range(n)))
        i += n
    return out


def _job(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One unit of work in a worker process: a complexity-aware run, or a seed's dense model + baselines."""
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    b = BenchConfig.model_validate(spec["bench"])
    data = load_bench_data(b, spec["data"])
    seed, kwargs = spec["seed"], b.complexity_kwargs

    def build() -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(DATASETS[spec["data"]], kwargs, data.input_shape, data.num_classes)

    ctx = Context(data=data, seed=seed, device="cpu", build=build, latency_table=Path("unused.json"), opset=17)
    dense_macs = count_macs(build(), data.input_shape)[0]
    if spec["kind"] == "complexity":
        retrain = spec.get("retrain", 0)  # the search for epochs - retrain, the structure found trained anew after
        cfg = complexity.Config(epochs=spec["epochs"] - retrain, retrain_epochs=retrain,
                                target_macs_reduction=spec["target"], **spec.get("knobs", {}))
        start = time.perf_counter()
        net, _, report = complexity.train(build(), cfg, ctx)
        if retrain:
            complexity.retrain(net, cfg, ctx)  # as the method's apply does after its search
        seconds = time.perf_counter() - start
        accuracy, loss = evaluate(net, data.test)
        macs, params = count_macs(net, data.input_shape)
        structure = [{"layer": n, "found": m.out_channels} for n, m in net.named_modules()
                     if isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d)]
        return [{"kind": "complexity", "variant": spec["variant"], "seed": seed, "target": spec["target"],
                 "achieved": dense_macs / macs, "macs": macs, "params": params, "accuracy": accuracy, "loss": loss,
                 "seconds": seconds, "undecided": report["undecided_at_end"],
                 "blocks_removed": len(report["removed_blocks"]),
                 "units_alive": report["epochs"][-1]["units_alive"], "stages": _stages(structure, kwargs),
                 "strength_final": report["strength_final"]}]
    # a seed's dense models and the baselines at the MACs complexity-aware achieved
    out = []
    start = time.perf_counter()
    full = build()
    fit(full, data.train, Optim(spec["epochs"], b.batch_size, b.lr), seed, f"dense {spec['epochs']} epochs seed {seed}")
    out.append({"kind": "dense", "variant": "dense", "seed": seed, "epochs": spec["epochs"],
                "seconds": time.perf_counter() - start, "accuracy": evaluate(full, data.test)[0],
                "macs": dense_macs})
    base = build()
    fit(base, data.train, Optim(spec["dense_epochs"], b.batch_size, b.lr), seed, f"dense E1 seed {seed}")
    for name in ("l2_kd", "plain_tp"):
        m = b.methods[name]
        pcfg = _prune_config(m, b, 1)
        for target, achieved in spec["achieved"].items():
            ratio = search_ratio(lambda r, pcfg=pcfg: channel.macs_after(base, data.input_shape, pcfg, r, data.train,
                                                                         seed), dense_macs, achieved)
            model = copy.deepcopy(base)
            torch.manual_seed(seed)
            channel.run_schedule(model, pcfg, ratio, Context(data=data, seed=seed, device="cpu", build=build,
                                                             latency_table=Path("unused.json"), opset=17))
            fit(model, data.train, Optim(spec["epochs"] - spec["dense_epochs"], b.batch_size, b.finetune_lr), seed,
                f"{name} {achieved:.2f}x", distill=Distill(base, 4.0, 0.7) if m.distill else None)
            macs, params = count_macs(model, data.input_shape)
            out.append({"kind": "baseline", "variant": name, "seed": seed, "target": float(target),
                        "matched": achieved, "achieved": dense_macs / macs, "macs": macs, "params": params,
                        "accuracy": evaluate(model, data.test)[0]})
    return out


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] != "dense":
            cells.setdefault((r["variant"], r["target"]), []).append(r)
    rows = []
    for (variant, target), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0.0)):
        acc, ci = _ci95([r["accuracy"] for r in rs])
        ach, ach_ci = _ci95([r["achieved"] for r in rs])
        row = {"variant": variant, "target": target, "n": len(rs), "accuracy": acc, "accuracy_ci95": ci,
               "achieved": ach, "achieved_ci95": ach_ci}
        if rs[0]["kind"] == "complexity":
            row.update({"undecided_max": max(r["undecided"] for r in rs),
                        "blocks_removed": float(np.mean([r["blocks_removed"] for r in rs])),
                        "units_alive": float(np.mean([r["units_alive"] for r in rs])),
                        "stages": [float(v) for v in np.mean([r["stages"] for r in rs], axis=0)],
                        "seconds": float(np.mean([r["seconds"] for r in rs]))})
        rows.append(row)
    dense = [r for r in records if r["kind"] == "dense"]
    d_acc, d_ci = _ci95([r["accuracy"] for r in dense]) if dense else (0.0, 0.0)
    return {"cells": rows, "dense_accuracy": d_acc, "dense_accuracy_ci95": d_ci,
            "dense_seconds": float(np.mean([r["seconds"] for r in dense])) if dense else 0.0}


def markdown(summary: dict[str, Any], b: BenchConfig, seeds: int, targets: list[float], epochs: int,
             dense_epochs: int, retrain: int, data: str) -> str:
    by = {(c["variant"], c["target"]): c for c in summary["cells"]}
    head = "| method | " + " | ".join(f"≈{t:g}×" for t in targets) + " |"
    out = [f"{data}, `{DATASETS[data]}` {b.complexity_kwargs}, {seeds} seed(s), mean ± 95 % CI of test accuracy "
           f"(achieved MACs reduction in brackets). Every method gets {epochs} epochs in all; complexity-aware trains "
           f"from scratch (the pipeline's default: the search {epochs - retrain} epochs, then the structure it found "
           f"trained anew {retrain}; search only: the search all {epochs}, its own weights kept), the others train "
           f"dense {dense_epochs} epochs and fine-tune {epochs - dense_epochs} at the MACs complexity-aware (the "
           f"default) achieved. Dense, {epochs} epochs: {summary['dense_accuracy']:.1%} ± "
           f"{summary['dense_accuracy_ci95']:.1%}.", "", head, "|---|" + "---:|" * len(targets)]
    names = {"complexity_aware": f"complexity-aware (search {epochs - retrain} + retrain {retrain})",
             "search_only": f"complexity-aware, search only ({epochs})",
             "l2_kd": "l2 + BN recal + KD (dense E1 + FT E2)", "plain_tp": "plain torch-pruning (dense E1 + FT E2)"}
    for variant, label in names.items():
        cells = []
        for t in targets:
            c = by.get((variant, t))
            cells.append("–" if c is None else f"{c['accuracy']:.1%} ± {c['accuracy_ci95']:.1%} ({c['achieved']:.2f}×)")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += ["", f"**Complexity-aware variants at ≈{ABLATION_TARGET:g}×** (channels kept per stage: sum of the "
            "blocks' inner widths that are left; undecided = max over surviving gates of min(θ, 1 − θ) at the end)", "",
            "| variant | accuracy | achieved | blocks removed | channels per stage | undecided | train s |",
            "|---|---:|---:|---:|---|---:|---:|"]
    for variant in ["complexity_aware", *ABLATIONS]:
        c = by.get((variant, ABLATION_TARGET))
        if c is None:
            continue
        stages = " / ".join(f"{s:.0f}" for s in c["stages"])
        out.append(f"| {variant} | {c['accuracy']:.1%} ± {c['accuracy_ci95']:.1%} | {c['achieved']:.2f}× | "
                   f"{c['blocks_removed']:.1f} | {stages} | {c['undecided_max']:.1e} | {c['seconds']:.0f} |")
    c = by.get(("default knobs", None))
    if c is not None:
        out += ["", f"**Default knobs** (strength 1, no target; {c['n']} seed(s)): {c['accuracy']:.1%} ± "
                f"{c['accuracy_ci95']:.1%} at {c['achieved']:.2f}× ± {c['achieved_ci95']:.2f}× MACs, "
                f"{c['blocks_removed']:.1f} of 9 blocks removed, {c['units_alive']:.0f} units left (largest "
                f"min(θ, 1 − θ) at the end: {c['undecided_max']:.1e})."]
    out += ["", f"Dense training of the same {epochs} epochs: {summary['dense_seconds']:.0f} s per seed (one torch "
            "thread; complexity-aware's steps cost one forward and one backward pass, as dense training's, on a network "
            "that shrinks as structures are removed)."]
    return "\n".join(out) + "\n"


def plot(summary: dict[str, Any], dense_widths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    for variant in ("complexity_aware", "search_only", "l2_kd", "plain_tp"):
        cells = sorted((c for c in summary["cells"] if c["variant"] == variant), key=lambda c: c["achieved"])
        if cells:
            x, y = [c["achieved"] for c in cells], np.array([c["accuracy"] for c in cells])
            ci = np.array([c["accuracy_ci95"] for c in cells])
            ax.plot(x, y, "o-", label=variant, markersize=3)
            ax.fill_between(x, y - ci, y + ci, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("achieved MACs reduction (×)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    width = 0.8 / (1 + len(ABLATIONS) + 1)
    stages = np.arange(len(dense_widths))
    bx.bar(stages, dense_widths, width, label="dense")
    for i, variant in enumerate(["complexity_aware", *ABLATIONS], start=1):
        c = next((c for c in summary["cells"] if c["variant"] == variant and c["target"] == ABLATION_TARGET), None)
        if c is not None:
            bx.bar(stages + i * width, c["stages"], width, label=variant)
    bx.set_xticks(stages + width * 2, [f"stage {s + 1}" for s in stages])
    bx.set_ylabel("inner channels kept (sum over blocks)")
    bx.set_title(f"structure found at ≈{ABLATION_TARGET:g}×")
    bx.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_complexity(cfg: Config, b: BenchConfig, quick: bool, workers: int, out_dir: Path, data: str = "mnist1d",
                   seeds: int | None = None, targets: list[float] | None = None) -> dict[str, Any]:
    seeds = 1 if quick else seeds or b.seeds
    targets = [ABLATION_TARGET] if quick else targets or list(b.targets)
    epochs, dense_epochs, retrain = (6, 3, 2) if quick else (b.complexity_epochs, b.complexity_dense_epochs,
                                                             b.complexity_retrain_epochs)
    bench = b.model_dump(mode="json")
    if quick:
        bench["samples"] = min(b.samples, 1000)
    common = {"kind": "complexity", "epochs": epochs, "bench": bench, "data": data}
    specs = [{**common, "variant": v, "seed": s, "target": t, "retrain": r} for s in range(seeds) for t in targets
             for v, r in (("complexity_aware", retrain), ("search_only", 0))]
    specs += [{**common, "variant": v, "seed": s, "target": ABLATION_TARGET, "knobs": knobs, "retrain": retrain}
              for s in range(seeds) for v, knobs in ABLATIONS.items()]
    specs += [{**common, "variant": "default knobs", "seed": s, "target": None, "retrain": retrain}
              for s in range(seeds)]  # strength 1, no MACs target: what the defaults find
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(_job, s): s for s in specs}
        baselines_sent: set[int] = set()
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                spec = pending.pop(fut)
                records += fut.result()
                log.info("bench complexity: %s %s seed %d done (%d left, %.0f s)", spec["kind"],
                            spec.get("variant", ""), spec["seed"], len(pending), time.perf_counter() - start)
            for s in range(seeds):  # a seed's baselines once its complexity-aware runs have their achieved MACs
                ours = {r["target"]: r["achieved"] for r in records if r["kind"] == "complexity" and r["seed"] == s
                        and r["variant"] == "complexity_aware"}
                if s not in baselines_sent and len(ours) == len(targets):
                    baselines_sent.add(s)
                    job = {"kind": "baselines", "seed": s, "epochs": epochs, "dense_epochs": dense_epochs,
                           "achieved": ours, "bench": bench, "data": data}
                    pending[pool.submit(_job, job)] = job
    summary = summarize(records)
    md = markdown(summary, b, seeds, targets, epochs, dense_epochs, retrain, data)
    result = {"config": bench, "data": data, "quick": quick, "seeds": seeds, "targets": targets, "epochs": epochs,
              "dense_epochs": dense_epochs, "retrain_epochs": retrain, "records": records, "summary": summary,
              "markdown": md, "seconds": time.perf_counter() - start}
    name = "complexity" + ("" if data == "mnist1d" else f"_{data}")
    write_report(out_dir, name, result, md + FIGURE.replace("complexity.png", f"{name}.png"))
    widths = b.complexity_kwargs.get("widths", [32, 64, 128])
    blocks = b.complexity_kwargs.get("blocks", [2, 2, 2])
    plot(summary, [w * n for w, n in zip(widths, blocks, strict=True)], out_dir / f"{name}.png")
    if cfg.tracking.enabled:
        from pruning.tracking import log_report

        log_report(cfg.tracking.experiment + "-bench", f"bench-{name}" + ("-quick" if quick else ""),
                   {"seeds": seeds, "epochs": epochs, "dense_epochs": dense_epochs, "retrain_epochs": retrain,
                    "targets": targets, "data": data},
                   {"summary": summary}, [out_dir / f"{name}.md", out_dir / f"{name}.png"])
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m pruning bench complexity", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1000 samples, the 4x target, 6 epochs")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    parser.add_argument("--data", choices=sorted(DATASETS), default="mnist1d", help="the benchmark's data and ResNet")
    parser.add_argument("--seeds", type=int, default=None, help="instead of bench.seeds")
    parser.add_argument("--targets", default=None, help="instead of bench.targets: MACs reductions, comma-separated")
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",") if t] if args.targets else None
    sys.exit(main(lambda cfg, b, out: print(run_complexity(cfg, b, args.quick, max(1, args.workers), out, args.data,
                                                           args.seeds, targets)["markdown"]), args.params))
