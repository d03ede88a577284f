"""``python -m bench.transformers [--seeds N] [--quick]``: transformers pruned to 2x fewer MACs, ten ways, on the two
examples.

On ``examples/vit-digits`` (a ViT on the bundled digits) and ``examples/text-topics`` (a BERT on a generated text
task), each with its own params.yaml (data, model, training, fine-tuning): per seed, the dense model is trained as
the train stage trains it, then pruned from that same model (paired) to ``target`` x fewer MACs by

- ``heads_mlp``: the channel method's default (whole heads and MLP channels; ``prune.hidden: auto``: the hidden
  size kept, except a BERT's, which follows its heads: its class derives the head size from it);
- ``heads_mlp_hidden``: the same with ``prune.hidden: true`` (the hidden size pruned too; a BERT's as by default);
- ``heads_mlp_keep_hidden``: the same with ``prune.hidden: false`` (a BERT's hidden size kept as well: ``save_pretrained``
  cannot state it, the pipeline's model file and ONNX can);
- ``heads_only`` / ``mlp_only``: as ``heads_mlp_keep_hidden`` with the MLP's / the attention's projections left alone
  (heads alone cannot reach 2x: at most all heads but one go, the figure says what was reached);
- ``layers``: the depth method, whole layers dropped (``1 - 1/target`` of them, ranked by loss change);
- ``latency``: the channel method's latency allocation at the same MACs target (heads per layer and MLP width,
  priced by measured ONNX Runtime time and the calibration loss each cut adds, :mod:`pruning.allocation.transformer`);
- ``latency_layers``: the same with whole layers as a third knob (``latency_layers``);
- ``latency_speedup``: that (layers included: width alone does not reach 2x on these models) with ``target`` as a
  *measured* speedup (the search times its candidates alternately with the dense model at batch 1 and the example's
  sequence length); its MACs reduction is what that took;
- ``plain_tp``: torch-pruning as its Hugging Face examples use it: one ratio for every channel (the hidden size
  included), heads by the same ratio, magnitude (L2) importance, then the attention attributes set as its examples set
  them by hand;

each fine-tuned with the example's fine-tune settings (epochs, optimizer, distillation from the dense model). Per
variant: test accuracy (torch), the MACs reached, and the measured speedup over the dense model at batch 1 and the
example's sequence length in ONNX Runtime (timed alternately with the dense model, median of paired rounds), fp32 and
with INT8 on top (quantize.mode auto: dynamic for these graphs). Writes reports/bench/transformers.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.config import BenchConfig, main, write_report
from bench.criteria import _ci95
from pruning import attention, layers
from pruning.config import Config, load_config
from pruning.counting import count_macs
from pruning.data import Data, at_length, logits_of, take
from pruning.errors import PruningError
from pruning.methods import Context, channel, depth
from pruning.progress import steps as progress_steps
from pruning.runtime.export import export_onnx
from pruning.runtime.quantize import quantize, resolved_mode
from pruning.runtime.session import score, tiled
from pruning.runtime.timing import Protocol, paired_speedup
from pruning.stages import prepare
from pruning.stages.common import prepared_data
from pruning.task import build_task
from pruning.training import Distill, evaluate, fit
from pruning.zoo import build_model

log = logging.getLogger(__name__)

EXAMPLES = ("vit-digits", "text-topics")
VARIANTS = ("heads_mlp", "heads_mlp_hidden", "heads_mlp_keep_hidden", "heads_only", "mlp_only", "layers", "latency",
            "latency_layers", "latency_speedup", "plain_tp")
TARGET = 2.0
PROTOCOL = Protocol(warmup=10, repeats=50, rounds=5)  # per round and model, at batch 1 (sub-millisecond runs)


def example(name: str, workdir: Path) -> tuple[Config, Data]:
    """The example's params and its prepared data (prepared in ``workdir``; its own code importable)."""
    where = Path("examples") / name
    sys.path.insert(0, str(where.resolve()))
    cfg = load_config(where / "params.yaml")
    prepare.run(cfg, workdir)
    return cfg, prepared_data(cfg, workdir)


def train_dense(cfg: Config, data: Data, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(cfg.model.arch, cfg.model.kwargs, data.input_shape, data.num_classes)
    fit(model, data.train, cfg.train.optim(), seed, f"dense seed {seed}", task=build_task(cfg.task))
    return model.eval()


def _names(model: nn.Module, part: str) -> list[str]:
    """The Linear layers of the attention's query/key/value projections (``attention``) or of the MLPs' widening
    projections (``mlp``), by module name."""
    ids = {id(p) for a in attention.find(model) for p in a.projections} if part == "attention" else \
        {id(m) for m in model.modules() if attention.mlp_width(m) is not None}
    if part == "attention":
        return [n for n, m in model.named_modules() if id(m) in ids]
    owners = [n for n, m in model.named_modules() if id(m) in ids]
    return [f"{o}.{c}" if o else c for o in owners for c, m in model.get_submodule(o).named_children()
            if isinstance(m, nn.Linear) and (c in attention.MLP_IN or c in ("dense", "gate_proj"))]


def plain_tp(model: nn.Module, example_input: Any, ratio: float) -> nn.Module:
    """torch-pruning as its Hugging Face examples run it (hidden size included), then the attributes set."""
    import torch_pruning as tp

    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]  # the classifier
    with attention.traceable(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(model, example_input, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=ratio, num_heads=attention.num_heads(attention.find(model)),
                                      prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
                                      ignored_layers=[head], output_transform=logits_of)
        pruner.step()
    attention.sync(model)
    return model


BISECTION = 12  # steps of plain_tp's ratio search: the ratio to within 0.95 / 2^12


def _plain_tp_at(dense: nn.Module, example_input: Any, target: float) -> nn.Module:
    """plain_tp at the smallest ratio (bisection) reaching ``target`` x fewer MACs."""
    base = count_macs(dense, example_input)[0]
    low, high = 0.0, 0.95
    for _ in range(BISECTION):
        mid = (low + high) / 2
        if base / count_macs(plain_tp(copy.deepcopy(dense), example_input, mid), example_input)[0] >= target:
            high = mid
        else:
            low = mid
    return plain_tp(copy.deepcopy(dense), example_input, high)


def prune(variant: str, dense: nn.Module, cfg: Config, data: Data, seed: int, target: float,
          table: Path) -> tuple[nn.Module, str]:
    """A pruned copy of ``dense``, and a note on what was reached when the target was not (``table``: the latency
    table the latency variants keep)."""
    model = copy.deepcopy(dense)
    ctx = Context(data=data, seed=seed, device="cpu", build=lambda: copy.deepcopy(dense),
                  latency_table=table, opset=cfg.export.opset, task=build_task(cfg.task))
    if variant == "plain_tp":
        return _plain_tp_at(dense, data.example, target), ""
    if variant == "layers":
        n = round(len(layers.find(model)) * (1 - 1 / target))
        return depth.apply(model, depth.Config(blocks=n), ctx).model, ""
    if variant.startswith("latency"):
        goal = {"target_speedup" if variant == "latency_speedup" else "target_macs_reduction": target}
        config = channel.Config(allocation="latency", ratio=None, latency_sequence_length=cfg.evaluate.sequence_length,
                                latency_layers=variant != "latency", **goal)
        try:
            return channel.apply(model, config, ctx).model, ""
        except PruningError as exc:  # out of reach: the fastest candidate measured, said so
            return channel.apply(copy.deepcopy(dense), config.model_copy(update={"target_speedup": None,
                                 "target_macs_reduction": target}), ctx).model, f"{exc}; {target:g}x MACs instead"
    ignored = {"heads_only": _names(model, "mlp"), "mlp_only": _names(model, "attention")}.get(variant, [])
    hidden = {"heads_mlp": "auto", "heads_mlp_hidden": True}.get(variant, False)
    base = channel.Config(ignored_layers=ignored, ratio=None, target_macs_reduction=target, hidden=hidden)
    try:
        return channel.apply(model, base, ctx).model, ""
    except Exception:  # noqa: BLE001 - the target is out of this variant's reach: as far as it goes
        model = copy.deepcopy(dense)
        heads = min(a.heads for a in attention.find(model))
        ratio = (heads - 1) / heads
        return channel.apply(model, base.model_copy(update={"ratio": ratio, "target_macs_reduction": None}),
                             ctx).model, f"{target:g}x out of reach: ratio {ratio:.2f}"


def measure(name: str, dense: nn.Module, model: nn.Module, cfg: Config, data: Data, seed: int,
            tmp: Path) -> dict[str, Any]:
    """Fine-tune ``model`` as the example's finetune stage does, then its accuracy, MACs and measured speedups."""
    f = cfg.finetune
    distill = Distill(dense, f.distill.temperature, f.distill.alpha) if f.distill.enabled else None
    task = build_task(cfg.task)
    fit(model, data.train, f.optim(), seed, f"{name} fine-tune seed {seed}", distill=distill, task=task)
    model.eval()
    accuracy, _ = evaluate(model, data.test, task=task)
    macs = count_macs(model, data.spec)[0]
    paths = {}
    for label, m in (("dense", dense), ("pruned", model)):
        paths[label] = tmp / f"{label}.onnx"
        export_onnx(m, data.spec, paths[label], cfg.export.opset)
    paths["int8"] = tmp / "int8.onnx"
    quantize(paths["pruned"], paths["int8"], resolved_mode(paths["pruned"], "auto"), [])
    x = take(data.test, range(1)).x
    length = cfg.evaluate.sequence_length
    x = tiled(at_length(x, length) if length else x, 1)
    fp32 = paired_speedup(paths["dense"], paths["pruned"], x, 1, PROTOCOL)
    int8 = paired_speedup(paths["dense"], paths["int8"], x, 1, PROTOCOL)
    int8_accuracy, _ = score(paths["int8"], data.test, 1, task)
    return {"accuracy": accuracy, "macs": macs, "speedup_b1": fp32.median, "speedup_b1_interval": [fp32.low,
            fp32.high], "int8_speedup_b1": int8.median, "int8_accuracy": int8_accuracy}


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for ex in dict.fromkeys(r["example"] for r in records):
        for variant in VARIANTS:
            rs = [r for r in records if r["example"] == ex and r["variant"] == variant]
            if not rs:
                continue
            acc, ci = _ci95([r["accuracy"] for r in rs])
            plain = {r["seed"]: r["accuracy"] for r in records if r["example"] == ex and r["variant"] == "plain_tp"}
            delta, delta_ci = _ci95([r["accuracy"] - plain[r["seed"]] for r in rs if r["seed"] in plain] or [0.0])
            int8, int8_ci = _ci95([r["int8_accuracy"] for r in rs])
            macs = float(np.mean([r["macs_reduction"] for r in rs]))
            speedup = float(np.median([r["speedup_b1"] for r in rs]))
            rows.append({"example": ex, "variant": variant, "n": len(rs), "accuracy": acc, "accuracy_ci95": ci,
                         "vs_plain_tp": delta, "vs_plain_tp_ci95": delta_ci,
                         "macs_reduction": macs, "speedup_b1": speedup,
                         "speedup_b1_range": [min(r["speedup_b1"] for r in rs), max(r["speedup_b1"] for r in rs)],
                         "efficiency": speedup / macs, "int8_speedup_b1": float(np.median([r["int8_speedup_b1"]
                                                                                             for r in rs])),
                         "int8_accuracy": int8, "int8_accuracy_ci95": int8_ci,
                         "dense_accuracy": float(np.mean([r["dense_accuracy"] for r in rs])),
                         "notes": sorted({r["note"] for r in rs if r["note"]})})
    return rows


def markdown(rows: list[dict[str, Any]], seeds: int, target: float) -> str:
    out = [f"Transformers pruned to {target:g}× fewer MACs (latency_speedup: to a {target:g}× measured speedup; "
           f"{seeds} seed(s); accuracy mean ± 95 % CI over seeds, "
           "the same fine-tune for every variant; speedups measured in ONNX Runtime at batch 1 and the example's "
           "sequence length, 1 thread, alternating with the dense model: median over seeds [lowest, highest]; "
           "efficiency = speedup ÷ MACs reduction; vs plain_tp: the accuracy difference to plain torch-pruning on the "
           "same seed's dense model, mean ± 95 % CI).", ""]
    for ex in dict.fromkeys(r["example"] for r in rows):
        rs = [r for r in rows if r["example"] == ex]
        out += [f"**{ex}** (dense: {rs[0]['dense_accuracy']:.1%})", "",
                "| variant | MACs ÷ | accuracy | vs plain_tp (paired) | speedup b1 | efficiency | INT8 speedup b1 | "
                "INT8 accuracy |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rs:
            low, high = r["speedup_b1_range"]
            note = f" ({'; '.join(r['notes'])})" if r["notes"] else ""
            out.append(f"| {r['variant']}{note} | {r['macs_reduction']:.2f} | {r['accuracy']:.1%} ± "
                       f"{r['accuracy_ci95']:.1%} | {r['vs_plain_tp'] * 100:+.1f} ± {r['vs_plain_tp_ci95'] * 100:.1f} pt | "
                       f"×{r['speedup_b1']:.2f} [{low:.2f}, {high:.2f}] | "
                       f"{r['efficiency']:.2f} | ×{r['int8_speedup_b1']:.2f} | {r['int8_accuracy']:.1%} ± "
                       f"{r['int8_accuracy_ci95']:.1%} |")
        out.append("")
    return "\n".join(out)


def _kept(out_dir: Path, examples: list[str], variants: list[str], seeds: int) -> list[dict[str, Any]]:
    """The records of the examples or variants not run now, from the last report (same seeds): one example or
    variant can be run again (paired comparisons use the same seeds' dense models, trained deterministically)."""
    path = out_dir / "transformers.json"
    if not path.is_file():
        return []
    last = json.loads(path.read_text())
    return [r for r in last.get("records", []) if (r["example"] not in examples or r["variant"] not in variants)
            and r["seed"] < seeds]


def run_bench(cfg: Config, seeds: int, examples: list[str], out_dir: Path, target: float = TARGET,
              variants: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    records: list[dict[str, Any]] = _kept(out_dir, examples, list(variants), seeds)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp_dir, progress_steps(seeds * len(examples) * len(variants),
                                                                  "bench transformers", log) as advance:
        tmp = Path(tmp_dir)
        for ex in examples:
            (tmp / ex).mkdir()
            ex_cfg, data = example(ex, tmp / ex)
            for seed in range(seeds):
                dense = train_dense(ex_cfg, data, seed)
                dense_accuracy, _ = evaluate(dense, data.test, task=build_task(ex_cfg.task))
                dense_macs = count_macs(dense, data.spec)[0]
                for variant in variants:
                    model, note = prune(variant, dense, ex_cfg, data, seed, target, tmp / ex / "latency.json")
                    rec = measure(variant, dense, model, ex_cfg, data, seed, tmp)
                    rec |= {"example": ex, "variant": variant, "seed": seed, "note": note,
                            "dense_accuracy": dense_accuracy, "macs_reduction": dense_macs / rec["macs"]}
                    records.append(rec)
                    advance(f"{ex} seed {seed} {variant}: accuracy {rec['accuracy']:.4f}, MACs "
                            f"÷{rec['macs_reduction']:.2f}, speedup ×{rec['speedup_b1']:.2f}")
                rows = summarize(records)
                md = markdown(rows, seeds, target)
                result = {"seeds": seeds, "target": target, "examples": sorted({r["example"] for r in records}),
                          "records": records, "summary": rows, "markdown": md, "seconds": time.time() - started}
                write_report(out_dir, "transformers", result, md)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.transformers", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 seed, the text example only")
    parser.add_argument("--examples", default=",".join(EXAMPLES),
                        help="which to run (comma-separated); the last report's records of the others are kept")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="which to run (comma-separated); the last report's records of the others are kept")
    args = parser.parse_args()

    def go(cfg: Config, b: BenchConfig, out: Path) -> None:
        ex = ["text-topics"] if args.quick else [e for e in args.examples.split(",") if e]
        variants = tuple(v for v in args.variants.split(",") if v)
        from pruning.errors import ConfigError

        for flag, asked, known in (("examples", ex, EXAMPLES), ("variants", variants, VARIANTS)):
            unknown = sorted(set(asked) - set(known))
            if unknown:
                raise ConfigError(f"--{flag}: no {flag[:-1]} {', '.join(unknown)} ({flag}: {', '.join(known)})")
        print(run_bench(cfg, 1 if args.quick else max(1, args.seeds), ex, out, variants=variants)["markdown"])

    sys.exit(main(go, args.params))
