"""Benchmark: MLflow + Prefect (+ DVC, process start-up) overhead of the default run.

overhead = wall time of `python -m pruning run` - time inside the stage functions (recorded through $PRUNING_TIMINGS
by the flow). Every repetition removes the pipeline's outputs, so all seven stages run. By default the MLflow store and
the Prefect home persist across repetitions (after one untimed run that creates them), as for a scheduled pipeline;
--fresh-stores gives each repetition new ones, as for the very first run on a machine. Each repetition also runs
the same seven stage functions in one plain Python process (no Prefect, no DVC, no MLflow), alternating with the flow,
so `flow - plain` is the wall time that Prefect + DVC + MLflow add, side by side. Prints one line per repetition and the
medians. With PREFECT_API_URL set, the flow uses that server instead of starting the ephemeral one.

    python -m bench.overhead --repeats 5 [--fresh-stores]
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


def _remove_outputs() -> None:
    """The pipeline's outputs (dvc.yaml outs), not the committed benchmark reports under reports/bench/."""
    for out in ("data", "models"):
        shutil.rmtree(ROOT / out, ignore_errors=True)
    for path in (ROOT / "reports").glob("*"):
        if path.is_file():
            path.unlink()


def once(stores: Path) -> dict[str, float]:
    _remove_outputs()
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "timings.jsonl"
        env = {**os.environ, "PRUNING_TIMINGS": str(timings), "MLFLOW_TRACKING_URI": f"sqlite:///{stores}/mlflow.db",
               "PREFECT_HOME": f"{stores}/prefect", "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pruning", "run"], cwd=ROOT, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in timings.read_text().splitlines()]
    inside = sum(r["seconds"] for r in rows)
    return {"wall_s": wall, "stages_s": inside, "tracking_s": sum(r["tracking_seconds"] for r in rows),
            "overhead_s": wall - inside, "overhead_pct": 100 * (wall - inside) / wall, "stages_run": len(rows)}


PLAIN = """
from pruning.config import load_config
from pruning.stages import STAGES
cfg = load_config("params.yaml")
cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"enabled": False})})
for stage in STAGES:
    stage.fn(cfg)
"""


def plain() -> float:
    """Wall time of the seven stage functions in one bare process: the floor any orchestration adds to."""
    _remove_outputs()
    env = {**os.environ, "PRUNING_TIMINGS": ""}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", PLAIN], cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fresh-stores", action="store_true", help="new MLflow store and Prefect home per repetition")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as shared:
        if not args.fresh_stores:
            once(Path(shared))  # untimed: creates the MLflow store and the Prefect database
        for i in range(args.repeats):
            bare = plain()
            if args.fresh_stores:
                with tempfile.TemporaryDirectory() as fresh:
                    results.append(once(Path(fresh)))
            else:
                results.append(once(Path(shared)))
            results[-1].update({"plain_wall_s": bare, "added_s": results[-1]["wall_s"] - bare,
                                "added_pct": 100 * (results[-1]["wall_s"] - bare) / results[-1]["wall_s"]})
            print(f"run {i + 1}: " + ", ".join(f"{k}={v:.2f}" for k, v in results[-1].items()), flush=True)
    medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print("median: " + ", ".join(f"{k}={v:.2f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
