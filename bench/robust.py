"""``python -m bench.robust``: is the speedup-target search fooled by a noisy machine?

For each architecture (as ``bench.latency --arch``: zoo names, bench/families.py, ``module:callable``), at
``--target`` (default 2x) measured speedup, batch 1, ``evaluate.threads``:

1. **fresh**: the search with an empty latency table, on a quiet machine;
2. **after an interrupted run under load**: a search is started while a second process times the dense network
   in a loop (a CPU-heavy neighbour, like a second benchmark), interrupted once ``--interrupt`` seconds have passed
   and it has measured a layer (Ctrl-C: it saves the table it measured so far, noisy timings included); then, load
   gone, the search runs again with that table;
3. **under load**: the search runs while the neighbour runs.

Each returned model is then re-measured **alone** (the neighbour stopped): dense and pruned alternately, 9 rounds,
the median of the per-round ratios and its 90 % interval. Writes ``robust.json`` / ``robust.md`` into
``paths.bench_dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp

from bench.config import BenchConfig, main
from bench.latency import CLASSES, SHAPE, resolve_arch
from pruning import dependency
from pruning.allocation import latency as lat
from pruning.allocation import latency_table as lt
from pruning.config import Config
from pruning.runtime.session import session
from pruning.runtime.timing import Protocol

log = logging.getLogger(__name__)

REMEASURE = Protocol(warmup=3, repeats=10, rounds=9)


def _dense(arch: str, shape: tuple[int, ...], classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return resolve_arch(arch)(shape, classes).eval()


def search(arch: str, shape: tuple[int, ...], classes: int, table_path: Path, target: float, step: int,
           opset: int, threads: int, progress: bool = False) -> tuple[lat.Allocation, lt.Yardstick]:
    """The speedup-target search of bench.latency (l2 importance, max_layer_ratio 0.9) with the table in
    ``table_path``, saved even when interrupted. ``progress``: print a line on stdout per layer measured (the
    interrupted run tells its parent that its table holds something to save)."""
    dense = _dense(arch, shape, classes)
    table = lt.LatencyTable.load(table_path, 1, threads)
    if progress:
        measure = table.ms

        def ms(spec: lt.LayerSpec) -> float:
            before = table.measured
            value = measure(spec)
            if table.measured > before:
                print("measured", flush=True)
            return value
        table.ms = ms  # type: ignore[method-assign]
    yardstick = lt.Yardstick(dense, shape, [], 1, threads, opset)
    try:
        alloc = lat.allocate(dense, shape, tp.importance.GroupMagnitudeImportance(p=2),
                             dependency.ignored_modules(dense, []), table, step=step, max_layer_ratio=0.9,
                             target_speedup=target, measure=yardstick.speedup, strict=False,
                             count_macs=yardstick.macs, profile=yardstick.profile)
    finally:
        table.save(table_path)
    return alloc, yardstick


def _burn(arch: str, shape: tuple[int, ...], classes: int, opset: int, threads: int) -> None:
    """The CPU-heavy neighbour: time the dense network in a loop until killed."""
    yardstick = lt.Yardstick(_dense(arch, shape, classes), shape, [], 1, threads, opset)
    sess = session(yardstick.dense_onnx, threads)
    feed = {sess.get_inputs()[0].name: yardstick.x}
    print("burning", flush=True)  # the parent starts the loaded search now: the machine is busy from here on
    while True:
        sess.run(None, feed)


def _child(args: list[str], stdout: int = subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.robust", *args], start_new_session=True,
                            stdout=stdout, stderr=subprocess.DEVNULL, text=True)


def _load(args: list[str], limit: float = 300.0) -> subprocess.Popen:
    """The CPU-heavy neighbour, once it is busy (it says so after its imports and export, which a fixed sleep would
    have to guess); ``limit`` bounds the wait."""
    load = _child(["--burn", *args], stdout=subprocess.PIPE)
    start = time.monotonic()
    while load.poll() is None and time.monotonic() - start < limit:
        if load.stdout.readline().strip() == "burning":  # type: ignore[union-attr]
            break
    return load


def _interrupt(child: subprocess.Popen, seconds: float, limit: float = 900.0) -> None:
    """Ctrl-C the ``--search`` child once ``seconds`` have passed **and** it has measured a layer (a fixed sleep alone
    can end before a loaded machine has imported torch, which interrupts nothing worth saving); ``limit`` bounds
    the wait."""
    measured = threading.Event()

    def read() -> None:
        for line in child.stdout:  # type: ignore[union-attr]
            if line.strip() == "measured":
                measured.set()
    threading.Thread(target=read, daemon=True).start()
    start = time.monotonic()
    while child.poll() is None and time.monotonic() - start < limit:
        if measured.is_set() and time.monotonic() - start >= seconds:
            break
        time.sleep(0.2)
    _stop(child, signal.SIGINT)  # Ctrl-C: the table measured so far is saved


def _stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait()


def _row(alloc: lat.Allocation, yardstick: lt.Yardstick, seconds: float,
         table: lt.LatencyTable | None = None) -> dict[str, Any]:
    """The search's own figures and the model re-measured alone."""
    alone = yardstick.speedup(alloc.ratios, REMEASURE, max_rounds=9)
    r = alloc.report
    return {"macs_reduction": r["macs_reduction"], "search": r.get("speedup"), "reached": r.get("reached"),
            "candidates": len(r.get("rounds", [])), "search_seconds": seconds, "alone": alone.as_dict(),
            "table_reused": r["table_entries"] - r["table_measured"], "table_stale": r["table_stale"],
            "calibration_error": r.get("calibration", {}).get("error")}


def run_robust(cfg: Config, archs: list[str], target: float, out_dir: Path, step: int = 16, interrupt: float = 20.0,
               shape: tuple[int, ...] = SHAPE, classes: int = CLASSES) -> dict[str, Any]:
    opset, threads = cfg.export.opset, cfg.evaluate.threads
    common = ["--input-shape", ",".join(map(str, shape)), "--classes", str(classes)]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            rows: dict[str, Any] = {}
            t0 = time.perf_counter()
            rows["fresh"] = _row(*search(arch, shape, classes, Path(tmp) / f"{arch}.fresh.json", target, step, opset,
                                         threads), time.perf_counter() - t0)
            noisy = Path(tmp) / f"{arch}.noisy.json"
            load = _load([arch, *common])
            try:
                child = _child(["--search", arch, "--table", str(noisy), "--target", str(target), "--step", str(step),
                                *common], stdout=subprocess.PIPE)
                _interrupt(child, interrupt)
            finally:
                _stop(load)
            saved = len(lt.LatencyTable.load(noisy, 1, threads).entries)
            t0 = time.perf_counter()
            rows["after an interrupted run under load"] = {
                **_row(*search(arch, shape, classes, noisy, target, step, opset, threads), time.perf_counter() - t0),
                "interrupted_table_entries": saved}
            load = _load([arch, *common])
            try:
                t0 = time.perf_counter()
                found = search(arch, shape, classes, Path(tmp) / f"{arch}.loaded.json", target, step, opset, threads)
                seconds = time.perf_counter() - t0
            finally:
                _stop(load)
            rows["under load (re-measured alone)"] = _row(*found, seconds)
            results[arch] = rows
            report = {"target": target, "step": step, "threads": threads, "input_shape": list(shape),
                      "archs": results, "markdown": markdown(results, target)}
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "robust.json").write_text(json.dumps(report, indent=1) + "\n")
            (out_dir / "robust.md").write_text(report["markdown"])
            log.info("bench robust: %s done\n%s", arch, markdown({arch: rows}, target))
    return report


def markdown(results: dict[str, Any], target: float) -> str:
    lines = ["| arch | scenario | MACs cut | search: speedup [90 % interval] | re-measured alone | in "
             f"[{target:g}, {1.15 * target:.2f}] | candidates | table entries reused / stale |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for arch, rows in results.items():
        for scenario, r in rows.items():
            s, a = r["search"] or {}, r["alone"]
            found = f"{s['speedup']:.2f}× [{s['low']:.2f}, {s['high']:.2f}]" if s else "not reached"
            ok = "yes" if target <= a["speedup"] <= 1.15 * target else "no"
            lines.append(f"| {arch} | {scenario} | {r['macs_reduction']:.2f}× | {found} | {a['speedup']:.2f}× "
                         f"[{a['low']:.2f}, {a['high']:.2f}] | {ok} | {r['candidates']} | {r['table_reused']} / "
                         f"{r['table_stale']} |")
    return "\n".join(lines) + "\n"


def _cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.robust", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--arch", default="mobilenetv2,efficientnet_b0_like")
    parser.add_argument("--target", type=float, default=2.0)
    parser.add_argument("--step", type=int, default=16)
    parser.add_argument("--interrupt", type=float, default=20.0, help="seconds before the loaded run is interrupted")
    parser.add_argument("--classes", type=int, default=CLASSES)
    parser.add_argument("--input-shape", default=",".join(map(str, SHAPE)))
    parser.add_argument("--burn", help=argparse.SUPPRESS)  # internal: the CPU-heavy neighbour
    parser.add_argument("--search", help=argparse.SUPPRESS)  # internal: the run that gets interrupted
    parser.add_argument("--table", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.input_shape.split(","))

    def run(cfg: Config, _b: BenchConfig, out: Path) -> None:
        if args.burn:
            _burn(args.burn, shape, args.classes, cfg.export.opset, cfg.evaluate.threads)
        elif args.search:
            with contextlib.suppress(KeyboardInterrupt):
                search(args.search, shape, args.classes, Path(args.table), args.target, args.step, cfg.export.opset,
                       cfg.evaluate.threads, progress=True)
        else:
            print(run_robust(cfg, args.arch.split(","), args.target, out, args.step, args.interrupt, shape,
                             args.classes)["markdown"])
    return main(run, args.params)


if __name__ == "__main__":
    sys.exit(_cli())
