"""Rich tables for the terminal: the dense / pruned / INT8 summary and the gate verdicts."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

_ROWS = [
    ("accuracy", "accuracy", lambda v: f"{v:.2%}"),
    ("MACs", "macs", lambda v: f"{v / 1e6:.2f} M"),
    ("params", "params", lambda v: f"{v / 1e3:.1f} k"),
    ("size on disk", "size_bytes", lambda v: f"{v / 1024:.1f} KiB"),
    ("latency p50 batch 1", "latency_ms_b1", lambda v: f"{v:.3f} ms"),
    ("latency p50 batch N", "latency_ms_bN", lambda v: f"{v:.2f} ms"),
]


def summary_table(metrics: dict[str, Any]) -> Table:
    """Dense vs pruned vs INT8, with the ratios against dense."""
    n = metrics.get("batch_size_N", "N")
    table = Table(title=f"Pruning summary (ONNX Runtime, {metrics.get('threads', '?')} thread(s), N = {n})")
    for col in ("", "dense", "pruned", "INT8", "pruned vs dense", "INT8 vs dense"):
        table.add_column(col, justify="left" if not col else "right")
    ratios = {
        "accuracy": (f"{-metrics['accuracy_drop']:+.2%}", f"{-metrics['quantized_accuracy_drop']:+.2%}"),
        "macs": (f"÷{metrics['macs_reduction']:.2f}", f"÷{metrics['macs_reduction']:.2f}"),
        "params": (f"÷{metrics['params_reduction']:.2f}", f"÷{metrics['params_reduction']:.2f}"),
        "size_bytes": (f"÷{metrics['dense']['size_bytes'] / metrics['pruned']['size_bytes']:.2f}",
                       f"÷{metrics['size_reduction']:.2f}"),
        "latency_ms_b1": (f"×{metrics['speedup_b1']:.2f} faster", f"×{metrics['quantized_speedup_b1']:.2f} faster"),
        "latency_ms_bN": (f"×{metrics['speedup_bN']:.2f} faster", f"×{metrics['quantized_speedup_bN']:.2f} faster"),
    }
    for label, key, fmt in _ROWS:
        table.add_row(label, *(fmt(metrics[v][key]) for v in ("dense", "pruned", "quantized")), *ratios[key])
    return table


def gates_table(verdict: dict[str, Any]) -> Table:
    """One row per gate with its verdict."""
    status = "[green]PASSED[/]" if verdict["passed"] else "[red]FAILED[/]"
    table = Table(title=f"Gates: {status}")
    for col in ("gate", "metric", "check", "value", "verdict"):
        table.add_column(col)
    for c in verdict["checks"]:
        value = "missing" if c["value"] is None else f"{c['value']:.4g}"
        table.add_row(c["name"], c["metric"], f"{c['op']} {c['threshold']:g}", value,
                      "[green]pass[/]" if c["passed"] else "[red]FAIL[/]")
    return table


def print_report(metrics: dict[str, Any], verdict: dict[str, Any], console: Console | None = None) -> None:
    """Print both tables."""
    console = console or Console()
    console.print(summary_table(metrics))
    console.print(gates_table(verdict))


def summary_markdown(metrics: dict[str, Any], verdict: dict[str, Any], promotion: dict[str, Any] | None,
                     ran: dict[str, bool]) -> str:
    """The summary and gate verdicts as Markdown (for the Prefect artifact)."""
    rows = ["| | dense | pruned | INT8 |", "|---|---:|---:|---:|"]
    for label, key, fmt in _ROWS:
        rows.append(f"| {label} | " + " | ".join(fmt(metrics[v][key]) for v in ("dense", "pruned", "quantized")) + " |")
    gates = ["| gate | metric | check | value | verdict |", "|---|---|---|---:|---|"]
    for c in verdict["checks"]:
        value = "missing" if c["value"] is None else f"{c['value']:.4g}"
        gates.append(f"| {c['name']} | {c['metric']} | {c['op']} {c['threshold']:g} | {value} | "
                     f"{'pass' if c['passed'] else '**FAIL**'} |")
    stages = ", ".join(f"{name} ({'ran' if did else 'up to date'})" for name, did in ran.items())
    lines = ["# Pruning pipeline", "",
             f"MACs ÷{metrics['macs_reduction']:.2f}, speedup batch N ×{metrics['speedup_bN']:.2f} (INT8 "
             f"×{metrics['quantized_speedup_bN']:.2f}), accuracy drop {metrics['accuracy_drop']:.2%} (INT8 "
             f"{metrics['quantized_accuracy_drop']:.2%}).", "", *rows, "",
             f"## Gates: {'PASSED' if verdict['passed'] else 'FAILED'}", "", *gates, "", f"Stages: {stages}."]
    if promotion:
        lines += ["", f"Registry: `{promotion['model_name']}` v{promotion['version']} -> "
                      f"{promotion['alias'] or 'no alias'} ({promotion['reason']})."]
    return "\n".join(lines) + "\n"
