"""``python -m bench.search``: what fanning the search out buys, what a trial costs beyond its work, and what the search
buys over the shipped params.yaml.

From the workspace's dense model (run ``make run`` or ``dvc repro train`` first), in throw-away copies of the
workspace: the search flow (``flows/search.py``: trials as Prefect tasks on a local Dask cluster) with ``--trials``
trials on 2 workers and on 1 worker, alternately, ``--repeats`` times; every trial trains with one thread
(``threads: 1``) in both arms, so the two arms do the same work (Optuna's first trials are its seeded random start:
the same values in both) and only the fan-out differs. Reported: the wall time of the trial phase of each arm
and their ratio (median and range over the repeats), the overhead per trial (the time a worker slot spent outside
the trial's own stages: Prefect's task bookkeeping, Dask's scheduling, the worker's imports, linking the inputs)
against the trial's own time, and the winner of the last 2-worker search against the shipped params.yaml's model,
both measured again alone with the evaluate stage's protocol. Writes ``search.json`` / ``search.md`` into
``paths.bench_dir``.

    python -m bench.search [--trials 8] [--repeats 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICK_SPACE = {"prune.ratio": {"low": 0.2, "high": 0.7}, "prune.criterion": ["l2", "taylor", "lamp"],
               "finetune.epochs": {"low": 1, "high": 2}, "finetune.distill.alpha": {"low": 0.3, "high": 0.9}}


def _workspace(dest: Path, search: dict[str, Any], quick: bool) -> Path:
    """A copy of the workspace's params and inputs (hard links): not a DVC repository, so the dense model trained with
    the machine's threads is taken as it is while the trials train with one."""
    from pruning.config import load_config
    from pruning.search.trial import check_inputs, inputs

    cfg = load_config(ROOT / "params.yaml")
    check_inputs(ROOT, cfg)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["threads"] = 1
    raw["tracking"]["enabled"] = False
    raw["search"] = {**raw["search"], **search, **({"space": QUICK_SPACE} if quick else {})}
    dest.mkdir(parents=True)
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for key in inputs():
        src, dst = ROOT / getattr(cfg.paths, key), dest / getattr(cfg.paths, key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dst)
    return dest


def _arm(tmp: Path, name: str, workers: int, trials: int, quick: bool) -> dict[str, Any]:
    from prefect import flow

    from flows.search import DaskTrials, plan, task_runner
    from pruning.config import load_config
    from pruning.search.study import run_search

    repo = _workspace(tmp / name, {"trials": trials, "workers": workers}, quick)
    cfg = load_config(repo / "params.yaml")
    slots, threads = plan(cfg)

    @flow(name=f"bench-search-{workers}")
    def arm() -> Any:
        from pruning.search.space import read_space

        return run_search(repo, cfg, read_space(cfg), repo / cfg.paths.search_dir, trials=trials,
                          objective=cfg.search.objective, runner=DaskTrials(slots), threads=threads)

    start = time.perf_counter()
    result = arm.with_options(task_runner=task_runner(cfg, slots))()
    wall = time.perf_counter() - start
    inside = sum(t.seconds for t in result.trials)
    return {"workers": workers, "wall_s": result.seconds, "total_s": wall, "trial_s": inside / len(result.trials),
            "overhead_per_trial_s": (result.seconds * slots - inside) / len(result.trials),
            "params": {t.number: t.params for t in result.trials}, "winner": result.winner, "repo": str(repo)}


def _shipped(tmp: Path, quick: bool) -> Any:
    """The shipped params.yaml's model, as a trial (the same stages, one thread), measured again alone."""
    from pruning.config import load_config
    from pruning.search.trial import TrialSpec, remeasure, run_trial

    repo = _workspace(tmp / "shipped", {}, quick)
    cfg = load_config(repo / "params.yaml")
    return remeasure(run_trial(TrialSpec(str(repo), cfg, str(repo / "shipped"), -1, {}, 1)))


def _figures(result: Any) -> dict[str, Any]:
    from pruning.search.study import final_values

    speedup, metric = final_values(result, "speedup_b1")
    return {"params": result.params, "speedup_b1": speedup, "metric": metric,
            "passed": result.final().passed, "macs_reduction": result.metrics["macs_reduction"]}


def run(trials: int, repeats: int, quick: bool) -> dict[str, Any]:
    from flows import server

    # as `python -m pruning search` does: the server first, so that the local Dask workers inherit its address
    # (PREFECT_API_URL) instead of each starting a temporary server of its own
    process = server.launch()
    if process is not None:
        server.wait(process)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        for r in range(repeats):
            for workers in ((2, 1) if r % 2 == 0 else (1, 2)):  # alternately: neither arm always goes first
                row = _arm(Path(tmp) / f"r{r}", f"w{workers}", workers, trials, quick)
                print(f"repeat {r + 1}/{repeats}, {workers} worker(s): trial phase {row['wall_s']:.0f} s, "
                      f"{row['trial_s']:.1f} s per trial inside, overhead {row['overhead_per_trial_s']:.1f} s per trial",
                      flush=True)
                rows.append({**row, "repeat": r})
        assert all(a["params"] == b["params"] for a in rows for b in rows), "the arms ran different trials"
        last = [row for row in rows if row["workers"] == 2][-1]
        winner = _figures(last["winner"]) if last["winner"] is not None else None
        shipped = _figures(_shipped(Path(tmp), quick))
    ratios = [a["wall_s"] / b["wall_s"] for a, b in zip((x for x in rows if x["workers"] == 1),
                                                       (x for x in rows if x["workers"] == 2), strict=True)]
    return {"trials": trials, "repeats": repeats, "quick": quick, "cores": len(os.sched_getaffinity(0)),
            "speedup_2_workers": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
            "arms": [{k: v for k, v in row.items() if k not in ("winner", "params", "repo")} for row in rows],
            "winner": winner, "shipped": shipped}


def report(result: dict[str, Any]) -> str:
    s = result["speedup_2_workers"]
    lines = [f"Search, {result['trials']} trials ({'quick space' if result['quick'] else 'shipped space'}), "
             f"{result['cores']} cores, threads: 1, {result['repeats']} repeats alternating:", "",
             "| workers | trial phase (s) | per trial, inside (s) | overhead per trial (s) |", "|---|---|---|---|"]
    for w in (1, 2):
        arm = [a for a in result["arms"] if a["workers"] == w]
        lines.append(f"| {w} | {statistics.median(a['wall_s'] for a in arm):.0f} | "
                     f"{statistics.median(a['trial_s'] for a in arm):.1f} | "
                     f"{statistics.median(a['overhead_per_trial_s'] for a in arm):.1f} |")
    lines += ["", f"2 workers vs 1: ×{s['median']:.2f} (range {s['min']:.2f}–{s['max']:.2f})", "",
              "| model | speedup b1 (alone) | metric | MACs reduction | gates |", "|---|---|---|---|---|"]
    for name in ("winner", "shipped"):
        m = result[name]
        if m is not None:
            lines.append(f"| {name} | {m['speedup_b1']:.2f} | {m['metric']:.4f} | {m['macs_reduction']:.2f} | "
                         f"{'passed' if m['passed'] else 'failed'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fine-tune 1-2 epochs instead of the shipped space's")
    args = parser.parse_args()
    from pruning.config import load_config
    from pruning.errors import PruningError

    try:
        out = Path(load_config(ROOT / "params.yaml").paths.bench_dir)
        result = run(args.trials, args.repeats, args.quick)
    except PruningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "search.md").write_text(report(result))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
