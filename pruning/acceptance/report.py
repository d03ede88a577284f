"""Rich tables for the terminal: the dense / pruned / INT8 summary and the gate verdicts; the same as Markdown."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from pruning.acceptance.metrics import Latency, Metrics, ModelLatency, ModelMetrics

# Rich lays out a stream that is not a terminal (a pipe, a CI log, `| tee`) at 80 columns, which splits the summary
# table's labels ("size on / disk") and one-line errors over two lines: there, $COLUMNS decides, else this width.
PIPED_WIDTH = 200


def make_console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr) as wide as $COLUMNS, else the terminal, else (piped) :data:`PIPED_WIDTH`."""
    piped = not (sys.stderr if stderr else sys.stdout).isatty()
    sized = os.environ.get("COLUMNS", "").isdigit()  # Rich reads $COLUMNS itself
    return Console(stderr=stderr, width=PIPED_WIDTH if piped and not sized else None)


Row = tuple[str, Callable[[ModelMetrics, ModelLatency], float], Callable[[float], str]]
_ROWS: list[Row] = [
    ("metric", lambda m, _: m.metric, lambda v: f"{v:.4g}"),  # label and format: the task's (_cells)
    ("MACs", lambda m, _: m.macs, lambda v: f"{v / 1e6:.2f} M"),
    ("params", lambda m, _: m.params, lambda v: f"{v / 1e3:.1f} k"),
    ("size on disk", lambda m, _: m.size_bytes, lambda v: f"{v / 1024:.1f} KiB"),
    ("latency p50 batch 1", lambda _, t: t.latency_ms_b1, lambda v: f"{v:.3f} ms"),
    ("latency p50 batch N", lambda _, t: t.latency_ms_bN, lambda v: f"{v:.2f} ms"),
]


def _cells(metrics: Metrics, latency: Latency) -> list[list[str]]:
    models = [(metrics.dense, latency.dense), (metrics.pruned, latency.pruned), (metrics.quantized, latency.quantized)]
    m, t = metrics, latency
    share = _is_share(m)
    drop = (lambda v: f"{0.0 - v:+.2%}") if share else (lambda v: f"{0.0 - v:+.4g}")  # 0.0 - 0.0: "+0", not "-0"
    ratios = [
        (drop(m.metric_drop), drop(m.quantized_metric_drop)),  # > 0: better than dense, either direction
        (f"÷{m.macs_reduction:.2f}", f"÷{m.macs_reduction:.2f}"),
        (f"÷{m.params_reduction:.2f}", f"÷{m.params_reduction:.2f}"),
        (f"÷{m.dense.size_bytes / m.pruned.size_bytes:.2f}", f"÷{m.size_reduction:.2f}"),
        (f"×{t.speedup_b1:.2f} faster", f"×{t.int8_vs_dense_speedup_b1:.2f} faster"),
        (f"×{t.speedup_bN:.2f} faster", f"×{t.int8_vs_dense_speedup_bN:.2f} faster"),
    ]
    cells = [[label, *(fmt(get(a, b)) for a, b in models), *ratio] for (label, get, fmt), ratio in zip(_ROWS, ratios,
                                                                                                     strict=True)]
    cells[0][0] = m.metric_name
    cells[5][0] = f"latency p50 batch {t.batch_size_N}"  # N said, not hidden
    if share:
        cells[0][1:4] = [f"{x.metric:.2%}" for x, _ in models]
    return cells


def _is_share(m: Metrics) -> bool:
    """Accuracy-like metrics print as percentages; the others as numbers."""
    return m.metric_name in ("accuracy", "top5_accuracy")


def sparsity_note(metrics: Metrics) -> str | None:
    """For a masked (unstructured / lottery) model: what its zeros buy, honestly."""
    p = metrics.pruned
    if p.weight_sparsity is None or p.csr_bytes is None or p.dense_bytes is None:
        return None
    return (f"{p.weight_sparsity:.1%} of the pruned model's Conv/Linear weights are zero: stored as CSR they take "
            f"{p.csr_bytes / 1024:.1f} KiB against {p.dense_bytes / 1024:.1f} KiB dense. ONNX Runtime's dense kernels "
            "multiply the zeros like any other value, so MACs and latency stay those of the dense model.")


def shipped_note(latency: Latency) -> str:
    """Which model ships and why (INT8 where it pays, else the pruned fp32 model); a warning first when the timings
    were too spread to trust."""
    note = f"Ships: {'INT8' if latency.shipped == 'quantized' else 'pruned fp32'} — {latency.shipped_why}."
    if not latency.latency_reliable:
        note = (f"UNRELIABLE TIMINGS: p95/p50 up to {latency.latency_spread:.3g} (a busy machine); the latency figures "
                f"and this choice mean little, and no latency gate passed on them. {note}")
    return note


def summary_table(metrics: Metrics, latency: Latency) -> Table:
    """Dense vs pruned vs INT8, with the ratios against dense."""
    caption = " ".join(n for n in (shipped_note(latency), sparsity_note(metrics)) if n)
    tokens = f", {latency.sequence_length} tokens" if latency.sequence_length else ""
    table = Table(title=f"Pruning summary (ONNX Runtime, {latency.threads} thread(s), N = {latency.batch_size_N}"
                        f"{tokens})",
                  caption=caption, caption_justify="left")  # a sentence: centred, its wrapped last words float
    for col in ("", "dense", "pruned", "INT8", "pruned vs dense", "INT8 vs dense"):
        table.add_column(col, justify="left" if not col else "right")
    for row in _cells(metrics, latency):
        table.add_row(*row)
    return table


def _value(c: dict[str, Any]) -> str:
    value = "missing" if c["value"] is None else f"{c['value']:.4g}"
    return f"{value} ({c['why']})" if c.get("why") else value


def gates_table(verdict: dict[str, Any]) -> Table:
    """One row per gate with its verdict."""
    status = "[green]PASSED[/]" if verdict["passed"] else "[red]FAILED[/]"
    table = Table(title=f"Gates: {status}")
    for col in ("gate", "metric", "check", "value", "verdict"):
        table.add_column(col)
    for c in verdict["checks"]:
        table.add_row(c["name"], c["metric"], f"{c['op']} {c['threshold']:g}", _value(c),
                      "[green]pass[/]" if c["passed"] else "[red]FAIL[/]")
    return table


def print_report(metrics: Metrics, latency: Latency, verdict: dict[str, Any], console: Console | None = None) -> None:
    """Print both tables (on stdout, unwrapped when piped, unless a console is given)."""
    console = console or make_console()
    console.print(summary_table(metrics, latency))
    console.print(gates_table(verdict))


def summary_markdown(metrics: Metrics, latency: Latency, verdict: dict[str, Any], promotion: dict[str, Any] | None,
                     ran: dict[str, bool]) -> str:
    """The summary and gate verdicts as Markdown (for the Prefect artifact)."""
    rows = ["| | dense | pruned | INT8 |", "|---|---:|---:|---:|"]
    rows += ["| " + " | ".join(cells[:4]) + " |" for cells in _cells(metrics, latency)]
    gates = ["| gate | metric | check | value | verdict |", "|---|---|---|---:|---|"]
    for c in verdict["checks"]:
        gates.append(f"| {c['name']} | {c['metric']} | {c['op']} {c['threshold']:g} | {_value(c)} | "
                     f"{'pass' if c['passed'] else '**FAIL**'} |")
    stages = ", ".join(f"{name} ({'ran' if did else 'up to date'})" for name, did in ran.items())
    note = sparsity_note(metrics)
    lines = ["# Pruning pipeline", "",
             f"MACs ÷{metrics.macs_reduction:.2f}, speedup batch {latency.batch_size_N} ×{latency.speedup_bN:.2f} (INT8 "
             f"×{latency.int8_vs_dense_speedup_bN:.2f}), {metrics.metric_name} drop {metrics.metric_drop:.4g} (INT8 "
             f"{metrics.quantized_metric_drop:.4g}).", "", shipped_note(latency), "", *rows,
             *(["", note] if note else []), "",
             f"## Gates: {'PASSED' if verdict['passed'] else 'FAILED'}", "", *gates, "", f"Stages: {stages}."]
    if promotion:
        lines += ["", f"Registry: `{promotion['model_name']}` v{promotion['version']} -> "
                      f"{promotion['alias'] or 'no alias'} ({promotion['reason']})."]
    return "\n".join(lines) + "\n"
