"""The metrics schema: the only place metric names live.

The evaluate stage measures three models (dense fp32, pruned fp32, pruned INT8) and writes two files:

- ``reports/metrics.json`` (:class:`Metrics`): everything deterministic — a rerun on the same data + params writes it
  again byte for byte, so field order and types here are part of the format;
- ``reports/latency.json`` (:class:`Latency`): what is measured in time, and the speedups derived from it.

Gates, MLflow and the summary see both as one flat dict (:func:`merged`); a gate or registry metric is validated
against :data:`KNOWN_METRICS` when params.yaml is loaded.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

VARIANTS = ("dense", "pruned", "quantized")  # dense fp32, pruned fp32, pruned INT8 (the shipped model)
BATCHES = ("b1", "bN")  # latency labels: batch 1 and batch N = evaluate.batch_size


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelMetrics(_Record):
    """Deterministic facts of one model: the task's metric and loss through ONNX Runtime on the test split, MACs and
    params (torch-pruning's counter), ONNX file size, the share of the dense parameters channel removal took away.

    ``metric`` is the task's metric whatever it is (``task.metric``); when it is top-1 accuracy (the default) it is
    also under ``accuracy``.
    """

    metric: float
    accuracy: float | None = None
    loss: float
    macs: int
    params: int
    size_bytes: int
    structural_sparsity: float
    # masked models only (unstructured, lottery): the share of zero Conv/Linear weights, and those weights stored as
    # CSR against stored densely — dense ONNX Runtime kernels multiply the zeros, so only storage shrinks
    weight_sparsity: float | None = None
    csr_bytes: int | None = None
    dense_bytes: int | None = None


class Metrics(_Record):
    """reports/metrics.json."""

    dense: ModelMetrics
    pruned: ModelMetrics
    quantized: ModelMetrics
    macs_reduction: float  # dense MACs / pruned MACs
    params_reduction: float
    size_reduction: float  # dense ONNX bytes / INT8 ONNX bytes
    metric_name: str  # the task's metric (accuracy, top5_accuracy, mse, your callable's name)
    greater_is_better: bool
    metric_drop: float  # how much worse pruned fp32 is than dense, in the metric's units (> 0: worse), either direction
    quantized_metric_drop: float  # the same for INT8
    parity_max_abs: float  # max |torch - ORT| over both exports
    parity_score: float  # max |torch - ORT| / (atol + rtol |torch|) over both exports: <= 1 passed the export check
    accuracy_drop: float | None = None  # dense - pruned fp32, when the metric is accuracy
    quantized_accuracy_drop: float | None = None  # dense - INT8, when the metric is accuracy

    @classmethod
    def derive(cls, dense: ModelMetrics, pruned: ModelMetrics, quantized: ModelMetrics, parity_max_abs: float,
               parity_score: float, metric_name: str = "accuracy", greater_is_better: bool = True) -> Metrics:
        sign = 1.0 if greater_is_better else -1.0
        accuracy = metric_name == "accuracy"
        return cls(dense=dense, pruned=pruned, quantized=quantized,
                   macs_reduction=_ratio(dense.macs, pruned.macs), params_reduction=_ratio(dense.params, pruned.params),
                   size_reduction=_ratio(dense.size_bytes, quantized.size_bytes), metric_name=metric_name,
                   greater_is_better=greater_is_better, metric_drop=sign * (dense.metric - pruned.metric),
                   quantized_metric_drop=sign * (dense.metric - quantized.metric), parity_max_abs=parity_max_abs,
                   parity_score=parity_score,
                   accuracy_drop=dense.metric - pruned.metric if accuracy else None,
                   quantized_accuracy_drop=dense.metric - quantized.metric if accuracy else None)


class ModelLatency(_Record):
    """Measured ORT latency of one model (ms): medians over alternating rounds of each round's p50 / p95."""

    latency_ms_b1: float
    latency_p95_ms_b1: float
    latency_ms_bN: float
    latency_p95_ms_bN: float


class Latency(_Record):
    """reports/latency.json."""

    dense: ModelLatency
    pruned: ModelLatency
    quantized: ModelLatency
    speedup_b1: float  # dense fp32 / pruned fp32
    speedup_bN: float
    int8_vs_dense_speedup_b1: float  # dense fp32 / pruned INT8
    int8_vs_dense_speedup_bN: float
    int8_vs_pruned_speedup_b1: float  # pruned fp32 / pruned INT8: INT8's own factor, on top of pruning
    int8_vs_pruned_speedup_bN: float
    batch_size_N: int
    threads: int
    sequence_length: int | None = None  # the token inputs' length timed (models with token inputs only)
    # which model ships (the gates' and the registry's "shipped"): "quantized" (INT8) or "pruned" (fp32), and why;
    # here and not in metrics.json because the choice reads the measured latencies
    shipped: str = "quantized"
    shipped_why: str = ""
    shipped_speedup_b1: float = 0.0  # dense fp32 / the shipped model
    shipped_speedup_bN: float = 0.0
    shipped_metric_drop: float = 0.0  # dense - shipped in the metric's direction (> 0: worse)
    # the widest p95 / p50 of any model and batch size: over evaluate.max_latency_spread, the machine was too busy
    # for these figures to mean anything (after re-measuring), and no gate decides on them
    latency_spread: float = 1.0
    latency_reliable: bool = True

    @classmethod
    def derive(cls, timings: dict[str, dict[str, float]], batch_size: int, threads: int,
               shipped: tuple[str, str, float] = ("quantized", "", 0.0), max_spread: float = math.inf,
               sequence_length: int | None = None) -> Latency:
        """From ``{variant: {latency_ms_b1: ..., ...}}`` (the timing protocol's medians) and the shipping decision
        ``(variant, why, its metric drop)`` (:func:`choose_shipped`); figures whose :func:`spread` exceeds
        ``max_spread`` are marked unreliable."""
        d, p, q = (ModelLatency(**timings[v]) for v in VARIANTS)
        s = {"pruned": p, "quantized": q}[shipped[0]]
        widest = spread(timings)
        return cls(dense=d, pruned=p, quantized=q, shipped=shipped[0], shipped_why=shipped[1],
                   sequence_length=sequence_length,
                   latency_spread=widest, latency_reliable=widest <= max_spread,
                   shipped_speedup_b1=_ratio(d.latency_ms_b1, s.latency_ms_b1),
                   shipped_speedup_bN=_ratio(d.latency_ms_bN, s.latency_ms_bN), shipped_metric_drop=shipped[2],
                   speedup_b1=_ratio(d.latency_ms_b1, p.latency_ms_b1),
                   speedup_bN=_ratio(d.latency_ms_bN, p.latency_ms_bN),
                   int8_vs_dense_speedup_b1=_ratio(d.latency_ms_b1, q.latency_ms_b1),
                   int8_vs_dense_speedup_bN=_ratio(d.latency_ms_bN, q.latency_ms_bN),
                   int8_vs_pruned_speedup_b1=_ratio(p.latency_ms_b1, q.latency_ms_b1),
                   int8_vs_pruned_speedup_bN=_ratio(p.latency_ms_bN, q.latency_ms_bN),
                   batch_size_N=batch_size, threads=threads)


def spread(timings: dict[str, dict[str, float]]) -> float:
    """The widest p95 / p50 over every model and batch size: how much a busy machine stretched the timings."""
    ratios = [t[f"latency_p95_ms_{b}"] / t[f"latency_ms_{b}"] for t in timings.values() for b in BATCHES
              if t.get(f"latency_ms_{b}")]
    return max(ratios, default=1.0)


def choose_shipped(metrics: Metrics, timings: dict[str, dict[str, float]], ship: str, min_speedup: float,
                   max_metric_loss: float) -> tuple[str, str, float]:
    """Which model ships: (variant, why, its metric drop against dense).

    ``ship`` int8 / fp32 force it; ``auto`` ships INT8 only where it pays — at least ``min_speedup`` times faster than
    the pruned fp32 model at batch 1 (medians of the alternating rounds) and losing at most ``max_metric_loss`` of the
    metric against it — else the pruned fp32 model, saying why. INT8 can lose on small networks (quantize/dequantize
    overhead larger than the saved arithmetic) and on sensitive ones (accuracy)."""
    factor = _ratio(timings["pruned"]["latency_ms_b1"], timings["quantized"]["latency_ms_b1"])
    loss = metrics.quantized_metric_drop - metrics.metric_drop  # > 0: INT8 worse than pruned fp32
    verdict = (f"INT8 {factor:.2f}x the speed of pruned fp32 at batch 1, {metrics.metric_name} "
               f"{0.0 - loss:+.4g} against it")
    if ship == "int8":
        return "quantized", f"evaluate.ship int8 ({verdict})", metrics.quantized_metric_drop
    if ship == "fp32":
        return "pruned", f"evaluate.ship fp32 ({verdict})", metrics.metric_drop
    if factor >= min_speedup and loss <= max_metric_loss:
        return "quantized", f"INT8 pays: {verdict}", metrics.quantized_metric_drop
    why = []
    if factor < min_speedup:
        why.append(f"{factor:.2f}x < {min_speedup:g}x")
    if loss > max_metric_loss:
        why.append(f"loses {loss:.4g} > {max_metric_loss:g}")
    return "pruned", f"INT8 does not pay ({'; '.join(why)}): {verdict}; the pruned fp32 model ships", \
        metrics.metric_drop


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def dump(record: _Record) -> dict[str, Any]:
    """The JSON-ready dict of a record, in schema order; fields that do not apply (None) are left out."""
    return record.model_dump(exclude_none=True)


def merged(metrics: Metrics, latency: Latency) -> dict[str, Any]:
    """Both files as one dict: per-model entries joined, top-level keys side by side, and ``shipped``: the entry of
    the model that ships (what gates and MLflow read)."""
    m, lat = dump(metrics), dump(latency)
    out = {**m, **lat, **{v: {**m[v], **lat[v]} for v in VARIANTS}}
    out["shipped"] = dict(out[latency.shipped])
    return out


def headline(metrics: Metrics, latency: Latency, verdict: dict[str, Any]) -> dict[str, Any]:
    """The few figures a row of ``dvc exp show`` starts with (paths.headline, DVC's only metrics file): the verdict,
    what ships, its task metric and what the pipeline bought — named apart from metrics.json's and latency.json's keys,
    so that DVC never prefixes them with a file name (a repository whose older commits declared those files)."""
    shipped = metrics.pruned if latency.shipped == "pruned" else metrics.quantized
    return {"gates": "passed" if verdict["passed"] else "failed",  # a word: DVC diffs a boolean as -1
            "ships": "int8" if latency.shipped == "quantized" else "fp32",
            "metric": shipped.metric, "drop": latency.shipped_metric_drop, "fewer_macs": metrics.macs_reduction,
            "faster_b1": latency.shipped_speedup_b1, "faster_bN": latency.shipped_speedup_bN}


def _numeric(model: type[BaseModel]) -> list[str]:
    return [n for n, f in model.model_fields.items() if f.annotation in (int, float, int | None, float | None)]


# what a busy machine can make meaningless: the latencies and every figure derived from them (not the shipped model's
# metric drop, which latency.json carries: it is measured on the test split, and the model it describes is the one
# registered, however it was chosen)
LATENCY_METRICS = frozenset(_numeric(Latency)) - {"shipped_metric_drop"} | {
    f"{v}.{f}" for v in (*VARIANTS, "shipped") for f in _numeric(ModelLatency)}

# every name a gate or the registry may use: a top-level number, or variant.field (not the measurement settings)
KNOWN_METRICS = frozenset(_numeric(Metrics) + _numeric(Latency)) - {"batch_size_N", "threads"} | {
    f"{v}.{f}" for v in (*VARIANTS, "shipped") for f in _numeric(ModelMetrics) + _numeric(ModelLatency)}
