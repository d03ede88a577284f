"""bench.latency's report: the checks read from the measured rows (``summary``: what ships, the speedup target, the
allocation at equal MACs, INT8 over pruned fp32) and the markdown tables (reports/bench/latency.md, which the docs
include). The measuring is bench/latency.py's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def target_row(target: float) -> str:
    return f"pruned, latency allocation, {target:g}x speedup target"


def at_macs_row(target: float) -> str:
    return f"pruned, latency allocation, {target:g}x MACs"


def ship(rows: dict[str, dict[str, Any]], target: float, min_speedup: float) -> None:
    """The row the pipeline would ship for the speedup-target model (INT8 only where it is ``min_speedup`` times
    faster than pruned fp32 at batch 1, as evaluate's choice), and the issue's checks on it, as ``summary``."""
    fp32 = target_row(target)
    int8 = f"{fp32} + INT8"
    if fp32 not in rows or int8 not in rows:
        return
    vs_fp32 = rows[int8]["paired_vs_fp32_b1"]  # each check reads its paired figure (bench.latency._pairs)
    shipped = "int8" if vs_fp32["speedup"] >= min_speedup else "fp32"
    rows[f"{fp32}, shipped"] = {**rows[int8 if shipped == "int8" else fp32], "shipped": shipped}
    macs = [r["speedup_b1"] for n, r in rows.items() if n.startswith("pruned, MACs allocation")]
    at_macs = rows.get(at_macs_row(target), {})
    versus = at_macs.get("paired_vs_macs_b1")
    paired = rows[fp32]["paired_b1"]
    speedup = paired["speedup"]
    rows[fp32]["summary"] = {
        "speedup_b1": speedup, "efficiency_b1": speedup / rows[fp32]["macs_reduction"],
        "interval_b1": [paired["low"], paired["high"]], "lineup_speedup_b1": rows[fp32]["speedup_b1"],
        "within_target_band": target <= speedup <= 1.15 * target,
        "latency_vs_best_macs_allocation_b1": versus["speedup"] if versus else None,
        "latency_vs_macs_interval_b1": [versus["low"], versus["high"]] if versus else None,
        "lineup_latency_vs_best_macs_allocation_b1": (at_macs["speedup_b1"] / max(macs)
                                                      if macs and "speedup_b1" in at_macs else None),
        "int8_over_pruned_fp32_b1": vs_fp32["speedup"], "int8_interval_b1": [vs_fp32["low"], vs_fp32["high"]],
        "lineup_int8_over_pruned_fp32_b1": rows[fp32]["p50_ms_b1"] / rows[int8]["p50_ms_b1"], "shipped": shipped}


def _paired_text(value: float, interval: list[float], lineup: float, against: str = "") -> str:
    """'2.22× [2.18, 2.29] paired (lineup 2.35×)': a paired figure with its interval, the lineup's beside it."""
    return f"{value:.2f}× [{interval[0]:.2f}, {interval[1]:.2f}] paired{against} (lineup {lineup:.2f}×)"


def write(out_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """latency.json and latency.md, rewritten after every architecture (a long run keeps what it measured)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latency.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / "latency.md").write_text(report["markdown"])
    return report


def markdown(results: dict[str, Any], batches: list[int], skipped: dict[str, dict[str, str]] | None = None) -> str:
    """One table per architecture, then the variants that could not be built."""
    lines = []
    for arch, rows in results.items():
        head = " | ".join(f"p50 b{b} (ms) | p95 b{b} | speedup b{b} | efficiency b{b}" for b in batches)
        lines += [f"**{arch}**", "", f"| variant | GMACs | M params | MACs cut | {head} |",
                  "|---|---:|---:|---:|" + "---:|" * (4 * len(batches))]
        for name, r in rows.items():
            cells = " | ".join(f"{r[f'p50_ms_b{b}']:.2f} | {r[f'p95_ms_b{b}']:.2f} | {r[f'speedup_b{b}']:.2f}× | "
                               f"{r[f'efficiency_b{b}']:.2f}" for b in batches)
            label = f"{name} ({r['shipped']})" if "shipped" in r else name
            lines.append(f"| {label} | {r['macs'] / 1e9:.2f} | {r['params'] / 1e6:.2f} | {r['macs_reduction']:.2f}× "
                         f"| {cells} |")
        lines.append("")
        sm = next((r["summary"] for r in rows.values() if "summary" in r), None)
        if sm:
            vs = sm["latency_vs_best_macs_allocation_b1"]
            speedup = _paired_text(sm["speedup_b1"], sm["interval_b1"], sm["lineup_speedup_b1"], " with dense")
            vs_text = "n/a" if vs is None else _paired_text(vs, sm["latency_vs_macs_interval_b1"],
                                                            sm["lineup_latency_vs_best_macs_allocation_b1"])
            int8 = _paired_text(sm["int8_over_pruned_fp32_b1"], sm["int8_interval_b1"],
                                sm["lineup_int8_over_pruned_fp32_b1"])
            lines += [f"Speedup target: {speedup} at batch 1 (in [target, 1.15 × target]: "
                      f"{'yes' if sm['within_target_band'] else 'no'}), efficiency {sm['efficiency_b1']:.2f}; at equal "
                      f"MACs latency / best MACs allocation {vs_text}; INT8 over pruned fp32 {int8} → ships "
                      f"{sm['shipped']}.", ""]
        for name, why in (skipped or {}).get(arch, {}).items():
            lines += [f"Not built: {name}: {why}", ""]
    return "\n".join(lines)
