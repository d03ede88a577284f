"""Acceptance gates: thresholds from params.yaml against the evaluate stage's metrics (reports/metrics.json and
reports/latency.json, as one dict: :func:`pruning.acceptance.metrics.merged`). Pure functions, no I/O.

A failing gate is a verdict (``passed: false``), not an exception; the CLI's ``--strict`` turns it into exit 2.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Literal

from pydantic import model_validator

from pruning.acceptance.metrics import KNOWN_METRICS, LATENCY_METRICS
from pruning.schema import Section

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


class GateConfig(Section):
    """One acceptance check: ``value op threshold``.

    ``metric`` is a key of reports/metrics.json or reports/latency.json (``accuracy_drop``, ``speedup_bN``) or
    ``variant.field`` (``quantized.accuracy``).
    ``relative_to_dense`` turns a ``variant.field`` value into its difference to (``diff``) or ratio over (``ratio``)
    the dense model's value of the same field.
    """

    metric: str
    op: Literal["<=", ">=", "<", ">"]
    threshold: float
    relative_to_dense: Literal["diff", "ratio"] | None = None

    @model_validator(mode="after")
    def _known_metric(self) -> GateConfig:
        check_metric(self.metric)
        if self.relative_to_dense and "." not in self.metric:
            raise ValueError(f"relative_to_dense needs a 'variant.field' metric, got {self.metric!r}")
        return self


def check_metric(name: str) -> None:
    """ValueError listing the known metrics if ``name`` is not one."""
    if name not in KNOWN_METRICS:
        raise ValueError(f"unknown metric {name!r} (known: {', '.join(sorted(KNOWN_METRICS))})")


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


def gate_metric(metric: str, relative_to_dense: str | None) -> str:
    """What a gate checks, as its reports say it: ``metric_drop``, ``quantized.accuracy (diff vs dense)``."""
    return metric + (f" ({relative_to_dense} vs dense)" if relative_to_dense else "")


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
                "metric": gate_metric(gate.metric, gate.relative_to_dense),
                "op": gate.op,
                "threshold": gate.threshold,
                "value": None if math.isnan(value) else value,
                "passed": ok,
            }
        )
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def distrust_latency(verdict: dict[str, Any], why: str) -> dict[str, Any]:
    """The verdict with every gate on a latency figure failed, saying ``why`` (figures measured on a machine too busy
    for them to mean anything decide nothing: such a gate neither passes nor fails on its number)."""
    checks = [{**c, "passed": False, "why": why} if c["metric"].split(" ")[0] in LATENCY_METRICS else c
              for c in verdict["checks"]]
    return {"passed": all(c["passed"] for c in checks), "checks": checks}
