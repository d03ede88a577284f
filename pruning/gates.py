"""Acceptance gates: thresholds from params.yaml against the evaluate stage's metrics (reports/metrics.json and
reports/latency.json, as one dict). Pure functions, no I/O.

A failing gate is a verdict (``passed: false``), not an exception; the CLI's ``--strict`` turns it into exit 2.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pruning.config import GateConfig

VARIANTS = ("dense", "pruned", "quantized")
VARIANT_FIELDS = (
    "accuracy",
    "loss",
    "macs",
    "params",
    "size_bytes",
    "structural_sparsity",
    "latency_ms_b1",
    "latency_ms_bN",
    "latency_p95_ms_b1",
    "latency_p95_ms_bN",
)
TOP_LEVEL = (
    "macs_reduction",
    "params_reduction",
    "size_reduction",
    "speedup_b1",
    "speedup_bN",
    "quantized_speedup_b1",
    "quantized_speedup_bN",
    "int8_speedup_b1",
    "int8_speedup_bN",
    "accuracy_drop",
    "quantized_accuracy_drop",
    "parity_max_abs",
)
KNOWN_METRICS = frozenset(TOP_LEVEL) | {f"{v}.{f}" for v in VARIANTS for f in VARIANT_FIELDS}

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def metric_value(metrics: dict[str, Any], name: str, relative_to_dense: str | None = None) -> float:
    """Look up ``name`` (``top`` or ``variant.field``) in a metrics dict, optionally relative to dense."""
    if "." not in name:
        return float(metrics[name])
    variant, field = name.split(".", 1)
    value = float(metrics[variant][field])
    if relative_to_dense == "diff":
        return value - float(metrics["dense"][field])
    if relative_to_dense == "ratio":
        return value / float(metrics["dense"][field])
    return value


def evaluate_gates(metrics: dict[str, Any], gates: dict[str, GateConfig]) -> dict[str, Any]:
    """Check every gate. Returns ``{passed, checks: [{name, metric, op, threshold, value, passed}]}``.

    A missing or NaN value fails its gate (never passes silently).
    """
    checks = []
    for name, gate in gates.items():
        try:
            value = metric_value(metrics, gate.metric, gate.relative_to_dense)
        except (KeyError, TypeError, ZeroDivisionError):
            value = math.nan
        ok = (not math.isnan(value)) and bool(_OPS[gate.op](value, gate.threshold))
        checks.append(
            {
                "name": name,
                "metric": gate.metric + (f" ({gate.relative_to_dense} vs dense)" if gate.relative_to_dense else ""),
                "op": gate.op,
                "threshold": gate.threshold,
                "value": None if math.isnan(value) else value,
                "passed": ok,
            }
        )
    return {"passed": all(c["passed"] for c in checks), "checks": checks}
