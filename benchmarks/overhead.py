"""Benchmark: MLflow + Prefect (+ DVC, process start-up) overhead of the default run.

overhead = wall time of `python -m pruning run` - time inside the stage functions (recorded by the CLI through
$PRUNING_TIMINGS). Every repetition starts from scratch (pipeline outputs removed, a fresh MLflow store and Prefect
home), so all seven stages run. Prints one line per repetition and the medians.

    python benchmarks/overhead.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def once() -> dict[str, float]:
    for out in ("data", "models", "reports"):
        shutil.rmtree(ROOT / out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "timings.jsonl"
        env = {**os.environ, "PRUNING_TIMINGS": str(timings), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
               "PREFECT_HOME": f"{tmp}/prefect", "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pruning", "run"], cwd=ROOT, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in timings.read_text().splitlines()]
    inside = sum(r["seconds"] for r in rows)
    return {"wall_s": wall, "stages_s": inside, "tracking_s": sum(r["tracking_seconds"] for r in rows),
            "overhead_s": wall - inside, "overhead_pct": 100 * (wall - inside) / wall, "stages_run": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = []
    for i in range(args.repeats):
        results.append(once())
        print(f"run {i + 1}: " + ", ".join(f"{k}={v:.2f}" for k, v in results[-1].items()), flush=True)
    medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print("median: " + ", ".join(f"{k}={v:.2f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
