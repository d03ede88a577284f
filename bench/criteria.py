"""``python -m bench.criteria [--quick]``: which pruning method works, at equal cost, with seeds and 95 % CIs.

On mnist1d (generated offline) with the 1D ResNet: one base model per seed; every method starts from that same base
model (paired comparison) and is pruned to the same *achieved* MACs reduction (the channel ratio is searched per
target), then measured in four regimes:

- ``recal``: one-shot + BatchNorm recalibration, no gradient step — isolates the criterion;
- ``ft``: one-shot + ``short_epochs`` of fine-tuning;
- ``gradual``: cubic schedule over ``short_epochs`` steps, one epoch after each (same total budget as ``ft``);
- ``long``: one-shot + ``long_epochs`` of fine-tuning (targets up to ``long_max_target`` only, for time).

Per seed it also measures each criterion's per-layer Spearman rank correlation with the loss_change oracle on the base
model. Writes reports/bench/criteria.{json,md,png}; every pruning run is an MLflow run under one parent.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.config import BenchConfig, BenchMethod, main
from pruning import criteria, dependency
from pruning.allocation.uniform import search_ratio
from pruning.arrays import load_split
from pruning.config import Config, DataConfig
from pruning.counting import count_macs
from pruning.criteria.oracle import LossChangeImportance, oracle_correlation
from pruning.data import CALIBRATION_BATCH, Data, Split
from pruning.methods import Context, channel
from pruning.progress import steps as progress_steps
from pruning.training import Distill, Optim, evaluate, fit
from pruning.zoo import build_model

log = logging.getLogger(__name__)

REGIMES = ("recal", "ft", "gradual", "long")
FIGURE = "\n![accuracy vs achieved MACs](criteria.png)\n"  # criteria.md's figure, beside it in out_dir


def load_bench_data(b: BenchConfig, source: str = "mnist1d") -> Data:
    """mnist1d from its offline generator, or scikit-learn's digits (data seed fixed: the seeds vary the models, not
    the data)."""
    (x, y), (xt, yt) = load_split(DataConfig(source=source, mnist1d_samples=b.samples), seed=0)
    return Data(Split(torch.from_numpy(x), torch.from_numpy(y)), Split(torch.from_numpy(xt), torch.from_numpy(yt)),
                tuple(x.shape[1:]), int(max(y.max(), yt.max())) + 1)


def train_base(b: BenchConfig, data: Data, seed: int) -> nn.Module:
    """The dense model every method of this seed starts from."""
    torch.manual_seed(seed)
    model = build_model(b.arch, b.kwargs, data.input_shape, data.num_classes)
    fit(model, data.train, Optim(b.base_epochs, b.batch_size, b.lr), seed, f"base model seed {seed}")
    return model.eval()


def _prune_config(m: BenchMethod, b: BenchConfig, steps: int) -> channel.Config:
    return channel.Config(criterion=m.criterion, scope=m.scope, ratio=0.5, iterative_steps=steps, round_to=None,
                          schedule="cubic" if steps > 1 else "linear", step_finetune_epochs=1 if steps > 1 else 0,
                          step_lr=b.finetune_lr, bn_recalibration=m.bn_recalibration, max_layer_ratio=m.max_layer_ratio,
                          calibration_batches=max(1, b.calibration_samples // CALIBRATION_BATCH))


def run_one(base: nn.Module, name: str, m: BenchMethod, regime: str, target: float, data: Data, b: BenchConfig,
            seed: int, ratios: dict[tuple, float]) -> dict[str, Any]:
    """Prune a copy of ``base`` with method ``m`` to ``target`` x fewer MACs in ``regime``; one record."""
    start = time.perf_counter()
    steps = b.short_epochs if regime == "gradual" else 1
    cfg = _prune_config(m, b, steps)
    shape = data.input_shape
    dense_macs = count_macs(base, shape)[0]
    # Uniform scope: the channel counts (hence the ratio) do not depend on the criterion, so share the search.
    key = (m.scope, target) if m.scope == "uniform" else (name, target)
    if key not in ratios:
        ratios[key] = search_ratio(lambda r: channel.macs_after(base, shape, cfg, r, data.train, seed), dense_macs,
                                   target)
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    ctx = Context(data=data, seed=seed, device="cpu", build=lambda: copy.deepcopy(base), latency_table=Path("unused.json"),
                  opset=17)
    _ = channel.run_schedule(model, cfg, ratios[key], ctx)
    epochs = {"recal": 0, "ft": b.short_epochs, "gradual": 1, "long": b.long_epochs}[regime]
    if epochs:
        distill = Distill(base, temperature=4.0, alpha=0.7) if m.distill else None
        fit(model, data.train, Optim(epochs, b.batch_size, b.finetune_lr), seed, f"{name} {regime} {target:g}x",
            distill=distill)
    accuracy, loss = evaluate(model, data.test)
    macs, params = count_macs(model, shape)
    return {"seed": seed, "method": name, "regime": regime, "target": target, "ratio": ratios[key],
            "achieved": dense_macs / macs, "params": params, "accuracy": accuracy, "loss": loss,
            "seconds": time.perf_counter() - start}


def oracle_correlations(base: nn.Module, b: BenchConfig, data: Data, seed: int,
                        names: list[str]) -> dict[str, dict[str, float]]:
    """Per criterion: per-layer Spearman correlation with the loss_change oracle on the base model."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train.x), generator=gen)[: b.calibration_samples]
    oracle = LossChangeImportance(max_channels=10**7, max_seconds=3600)
    out = {}
    for name in names:
        model = copy.deepcopy(base)
        imp = criteria.make(name)
        torch.manual_seed(seed)
        criteria.prepare(name, imp, model, data.train, max(1, b.calibration_samples // CALIBRATION_BATCH), seed)
        oracle.bind(model, data.train.x[idx], data.train.y[idx])
        out[name] = oracle_correlation(model, data.input_shape, imp, oracle, dependency.ignored_modules(model, []))
    return out


def _ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student t; 0 for a single value)."""
    from scipy.stats import t

    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, 0.0
    return mean, float(t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))


def summarize(records: list[dict[str, Any]], correlations: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Means and 95 % CIs per (method, regime, target); mean oracle correlation per criterion."""
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        cells.setdefault((r["method"], r["regime"], r["target"]), []).append(r)
    rows = []
    for (method, regime, target), rs in cells.items():
        acc, ci = _ci95([r["accuracy"] for r in rs])
        rows.append({"method": method, "regime": regime, "target": target, "n": len(rs), "accuracy": acc,
                     "accuracy_ci95": ci, "achieved": float(np.mean([r["achieved"] for r in rs]))})
    corr = {}
    for criterion in {c for per_seed in correlations for c in per_seed}:
        means = [float(np.mean(list(s[criterion].values()))) for s in correlations if s.get(criterion)]
        mean, ci = _ci95(means)
        corr[criterion] = {"spearman": mean, "ci95": ci, "n": len(means)}
    dense = _ci95(list({r["seed"]: r["base_accuracy"] for r in records}.values())) if records else (0.0, 0.0)
    return {"cells": rows, "oracle_correlation": corr, "dense_accuracy": dense[0], "dense_accuracy_ci95": dense[1]}


def markdown(summary: dict[str, Any], b: BenchConfig, seeds: int, targets: list[float]) -> str:
    """Tables: accuracy (mean ± 95 % CI over seeds) per method and target, one table per regime."""
    by = {(c["method"], c["regime"], c["target"]): c for c in summary["cells"]}
    methods = list(dict.fromkeys(c["method"] for c in summary["cells"]))
    titles = {"recal": "one-shot + BatchNorm recalibration, no gradient step",
              "ft": f"one-shot + {b.short_epochs}-epoch fine-tune",
              "gradual": f"gradual (cubic, {b.short_epochs} steps, {b.short_epochs} epochs in all)",
              "long": f"one-shot + {b.long_epochs}-epoch fine-tune"}
    out = [f"Test accuracy on mnist1d ({b.arch}, {seeds} seed(s); mean ± 95 % CI), at equal achieved MACs reduction. "
           f"Dense base models: {summary['dense_accuracy']:.1%} ± {summary['dense_accuracy_ci95']:.1%}.", ""]
    for regime in REGIMES:
        cols = [t for t in targets if (methods[0], regime, t) in by or any((m, regime, t) in by for m in methods)]
        if not cols:
            continue
        out += [f"**{titles[regime]}**", "", "| method | " + " | ".join(f"{t:g}×" for t in cols) + " |",
                "|---|" + "---:|" * len(cols)]
        for m in methods:
            cells = []
            for t in cols:
                c = by.get((m, regime, t))
                cells.append("–" if c is None else f"{c['accuracy']:.1%} ± {c['accuracy_ci95']:.1%}")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
    corr = summary["oracle_correlation"]
    if corr:
        out += ["**Rank correlation with the loss_change oracle** (per-layer Spearman on the base model, mean over "
                "layers; mean ± 95 % CI over seeds)", "", "| criterion | Spearman ρ |", "|---|---:|"]
        out += [f"| {c} | {v['spearman']:+.2f} ± {v['ci95']:.2f} |" for c, v in sorted(corr.items(),
                                                                                    key=lambda kv: -kv[1]["spearman"])]
    return "\n".join(out) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Accuracy vs achieved MACs reduction, one panel per regime, one line (with its 95 % CI band) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = [r for r in REGIMES if any(c["regime"] == r for c in summary["cells"])]
    fig, axes = plt.subplots(1, len(regimes), figsize=(4.2 * len(regimes), 3.8), squeeze=False, sharey=True)
    for ax, regime in zip(axes[0], regimes, strict=True):
        for method in dict.fromkeys(c["method"] for c in summary["cells"]):
            cells = sorted((c for c in summary["cells"] if c["method"] == method and c["regime"] == regime),
                           key=lambda c: c["achieved"])
            if not cells:
                continue
            x = [c["achieved"] for c in cells]
            y = np.array([c["accuracy"] for c in cells])
            ci = np.array([c["accuracy_ci95"] for c in cells])
            ax.plot(x, y, "o-", label=method, markersize=3)
            ax.fill_between(x, y - ci, y + ci, alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_title(regime)
        ax.set_xlabel("achieved MACs reduction (×)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write(b: BenchConfig, quick: bool, seeds: int, targets: list[float], records: list[dict[str, Any]],
           correlations: list[dict[str, dict[str, float]]], out_dir: Path) -> dict[str, Any]:
    summary = summarize(records, correlations)
    md = markdown(summary, b, seeds, targets)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"config": b.model_dump(mode="json"), "quick": quick, "seeds": seeds, "targets": targets,
              "records": records, "oracle_correlation_per_seed": correlations, "summary": summary, "markdown": md}
    (out_dir / "criteria.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "criteria.md").write_text(md + FIGURE)
    plot(summary, out_dir / "criteria.png")
    return result


def run_criteria(cfg: Config, b: BenchConfig, quick: bool, out_dir: Path) -> dict[str, Any]:
    """The whole benchmark. ``quick``: 1 seed, ``bench.quick_targets``, no long regime."""
    if not b.methods:
        from pruning.errors import ConfigError

        raise ConfigError('Missing "methods" in bench/params.yaml: name at least one method to compare')
    seeds = 1 if quick else b.seeds
    targets = b.quick_targets if quick else b.targets
    regimes = [r for r in REGIMES if not (quick and r == "long")]
    data = load_bench_data(b)
    plan = [(n, m, r, t) for n, m in b.methods.items() for r in regimes for t in targets
            if r != "long" or t <= b.long_max_target]
    names = sorted({m.criterion for m in b.methods.values()} - {"loss_change"})
    records: list[dict[str, Any]] = []
    correlations: list[dict[str, dict[str, float]]] = []
    with progress_steps(seeds * len(plan), "bench criteria", log) as advance:
        for seed in range(seeds):
            log.info("bench criteria: seed %d: training the base model (%d epochs)", seed, b.base_epochs)
            base = train_base(b, data, seed)
            base_accuracy = evaluate(base, data.test)[0]
            correlations.append(oracle_correlations(base, b, data, seed, names + ["loss_change"]))
            ratios: dict[tuple, float] = {}
            for name, m, regime, target in plan:
                rec = run_one(base, name, m, regime, target, data, b, seed, ratios)
                records.append({**rec, "base_accuracy": base_accuracy})
                advance(f"seed {seed} {name} {regime} {target:g}x: accuracy {rec['accuracy']:.4f}")
            result = _write(b, quick, seed + 1, targets, records, correlations, out_dir)  # a checkpoint per seed
    if cfg.tracking.enabled:
        from pruning.tracking import log_bench

        log_bench(cfg.tracking.experiment + "-bench", result, [out_dir / "criteria.md", out_dir / "criteria.png"])
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.criteria", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--quick", action="store_true", help="1 seed, bench.quick_targets, no long regime")
    args = parser.parse_args()
    sys.exit(main(lambda cfg, b, out: print(run_criteria(cfg, b, args.quick, out)["markdown"]), args.params))
