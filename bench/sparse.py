"""``python -m bench.sparse``: unstructured magnitude pruning and lottery tickets, reported honestly.

- Unstructured (Han et al. 2015): global magnitude pruning to ``bench.unstructured_sparsity`` + ``short_epochs`` of
  fine-tuning. Reported: accuracy, the CSR / COO size against dense storage, the size of the *structured* (channel)
  model of at least the same accuracy (the most compressed of the criteria benchmark's targets), and ONNX Runtime
  latency: zeros in dense kernels are not skipped, so the unstructured model is not faster.
- Lottery ticket (Frankle & Carbin 2019, with rewinding: Frankle et al. 2020): IMP to
  ``1 - (1 - per_round)^rounds`` sparsity; reported against the dense accuracy — matched within 1 pt, or by how much
  it misses.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.config import BenchConfig, BenchMethod, main
from bench.criteria import load_bench_data, run_one, train_base
from pruning import sparse
from pruning.config import Config
from pruning.data import Data
from pruning.errors import PruningError
from pruning.methods import lottery, unstructured
from pruning.runtime.export import export_onnx
from pruning.runtime.timing import Protocol, latency
from pruning.training import Optim, evaluate, fit
from pruning.zoo import build_model

STRUCTURED_TARGETS = (2.0, 4.0, 8.0, 16.0, 32.0)


def _structured_at(base: torch.nn.Module, data: Data, b: BenchConfig, accuracy: float) -> dict[str, Any] | None:
    """The most compressed structured (l2 channel) model, fine-tuned like the unstructured one, at >= accuracy."""
    best = None
    ratios: dict[tuple, float] = {}
    for target in STRUCTURED_TARGETS:
        try:
            rec = run_one(base, "l2", BenchMethod(criterion="l2"), "ft", target, data, b, 0, ratios)
        except PruningError:  # a target beyond what the net can lose ends the sweep
            break
        if rec["accuracy"] < accuracy:
            break
        best = rec
    return best


def unstructured_report(cfg: Config, b: BenchConfig, base: torch.nn.Module, data: Data) -> dict[str, Any]:
    """Prune ``base`` unstructured, fine-tune, and compare storage and latency."""
    model = copy.deepcopy(base)
    unstructured.magnitude_prune(model, b.unstructured_sparsity, "global")
    fit(model, data.train, Optim(b.short_epochs, b.batch_size, b.finetune_lr), 0, "unstructured fine-tune")
    unstructured.make_permanent(model)
    accuracy = evaluate(model, data.test)[0]
    state = model.state_dict()
    dense_bytes = sparse.dense_size_bytes(state)
    sizes = {layout: sparse.sparse_size_bytes(sparse.to_sparse(state, layout)) for layout in ("csr", "coo")}
    structured = _structured_at(base, data, b, accuracy)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"dense": Path(tmp) / "dense.onnx", "unstructured": Path(tmp) / "unstructured.onnx"}
        export_onnx(base, data.input_shape, paths["dense"], cfg.export.opset)
        export_onnx(model, data.input_shape, paths["unstructured"], cfg.export.opset)
        e = cfg.evaluate
        times = latency(paths, data.test.x.numpy(), {"bN": e.batch_size}, e.threads,
                        Protocol(e.warmup, e.repeats, e.rounds))
    report = {
        "sparsity": unstructured.weight_sparsity(model), "accuracy": accuracy,
        "dense_accuracy": evaluate(base, data.test)[0],
        "dense_bytes": dense_bytes, "csr_bytes": sizes["csr"], "coo_bytes": sizes["coo"],
        "csr_vs_dense": sizes["csr"] / dense_bytes,
        "latency_ms_bN_dense": times["dense"]["latency_ms_bN"],
        "latency_ms_bN_unstructured": times["unstructured"]["latency_ms_bN"],
    }
    if structured is not None:  # stored densely: 4 bytes per parameter (fp32), no indices needed
        report["structured"] = {"target": structured["target"], "achieved_macs_reduction": structured["achieved"],
                                "accuracy": structured["accuracy"], "bytes": 4 * structured["params"],
                                "csr_vs_structured": sizes["csr"] / (4 * structured["params"])}
    return report


def lottery_report(b: BenchConfig, data: Data) -> dict[str, Any]:
    """IMP with rewinding from a fresh model of the benchmark's architecture."""
    lcfg = lottery.Config(rounds=b.lottery_rounds, prune_per_round=b.lottery_prune_per_round, epochs=b.lottery_epochs,
                          rewind_epoch=b.lottery_rewind_epoch, batch_size=b.batch_size, lr=b.lr)

    def build() -> torch.nn.Module:
        return build_model(b.arch, b.kwargs, data.input_shape, data.num_classes)

    result = lottery.find_ticket(build, data.train, data.test, lcfg, seed=0)
    last = result.rounds[-1]
    return {"dense_accuracy": result.dense_accuracy, "rounds": result.rounds, "final_sparsity": last["sparsity"],
            "final_accuracy": last["accuracy"], "gap_pt": 100 * (result.dense_accuracy - last["accuracy"]),
            "matches_within_1pt": result.dense_accuracy - last["accuracy"] <= 0.01, "config": lcfg.model_dump()}


def markdown(un: dict[str, Any], lt: dict[str, Any]) -> str:
    """The two reports as Markdown."""
    kib = {k: f"{un[k] / 1024:.0f} KiB" for k in ("dense_bytes", "csr_bytes", "coo_bytes")}
    lines = [f"**Unstructured magnitude pruning** to {un['sparsity']:.0%} of the weights (global, then fine-tuned): "
             f"accuracy {un['accuracy']:.1%} (dense {un['dense_accuracy']:.1%}). Storage: dense {kib['dense_bytes']}, "
             f"CSR {kib['csr_bytes']} ({un['csr_vs_dense']:.2f}× dense), COO {kib['coo_bytes']}."]
    if "structured" in un:
        s = un["structured"]
        lines.append(f"The most compressed structured model at ≥ that accuracy ({s['achieved_macs_reduction']:.1f}× fewer "
                     f"MACs, {s['accuracy']:.1%}) stores {s['bytes'] / 1024:.0f} KiB densely: CSR is "
                     f"{s['csr_vs_structured']:.2f}× its size.")
    else:
        lines.append("No structured model of the benchmark's targets reached that accuracy.")
    lines.append(f"Latency in ONNX Runtime at batch N: dense {un['latency_ms_bN_dense']:.2f} ms, unstructured "
                 f"{un['latency_ms_bN_unstructured']:.2f} ms — zeros in dense kernels are not skipped, so it is not faster.")
    lines += ["", f"**Lottery ticket** (IMP, {lt['config']['prune_per_round']:.0%} of the remaining weights per round, "
                  f"rewound to epoch {lt['config']['rewind_epoch']}): dense {lt['dense_accuracy']:.1%}; at "
                  f"{lt['final_sparsity']:.0%} sparsity the ticket reaches {lt['final_accuracy']:.1%} — "
                  + ("within 1 pt of dense." if lt["matches_within_1pt"] else f"{lt['gap_pt']:.1f} pt below dense."),
              "", "| round | sparsity | accuracy |", "|---:|---:|---:|"]
    lines += [f"| {r['round']} | {r['sparsity']:.1%} | {r['accuracy']:.1%} |" for r in lt["rounds"]]
    return "\n".join(lines) + "\n"


def run_sparse(cfg: Config, b: BenchConfig, out_dir: Path) -> dict[str, Any]:
    """Both reports on the benchmark's data (seed 0); writes sparse.json / sparse.md."""
    data = load_bench_data(b)
    base = train_base(b, data, seed=0)
    result = {"unstructured": unstructured_report(cfg, b, base, data), "lottery": lottery_report(b, data)}
    result["markdown"] = markdown(result["unstructured"], result["lottery"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sparse.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out_dir / "sparse.md").write_text(result["markdown"])
    if cfg.tracking.enabled:
        from pruning.tracking import log_report

        numbers = {"unstructured": result["unstructured"],
                   "lottery": {k: v for k, v in result["lottery"].items() if k not in ("rounds", "config")}}
        log_report(cfg.tracking.experiment + "-bench", "bench-sparse", b.model_dump(mode="json"), numbers,
                   [out_dir / "sparse.json", out_dir / "sparse.md"])
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.sparse", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    sys.exit(main(lambda cfg, b, out: print(run_sparse(cfg, b, out)["markdown"]), args.params))
