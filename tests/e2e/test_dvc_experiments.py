"""DVC experiments compare what they claim to: real DVC in a real git repository, the shipped dvc.yaml and .gitignore
on the tiny params, from the golden run's baseline commit. The metrics and plots files are versioned by git (cache:
false), so `dvc exp show`, `dvc metrics diff` and `dvc plots diff` read them at every commit and experiment, and a run
leaves exactly those files (plus dvc.lock) for `git status` to show."""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import fresh_store
from tests.e2e.test_dvc import _env, _run
from tests.golden import status_after_run

DVC = (sys.executable, "-m", "dvc")


def _json(*args: str, cwd: Path):
    """A dvc command's --json answer (stdout only: DVC writes its warnings to stderr), with _run's environment."""
    out = subprocess.run([*DVC, *args, "--json"], cwd=cwd, capture_output=True, text=True, env=_env(cwd))
    assert out.returncode == 0 and "failed to load" not in out.stderr, out.stdout + out.stderr
    return json.loads(out.stdout)


def _in_git(repo_dir: Path) -> set[str]:
    """The files dvc.yaml hands to git: its metrics, evaluate's reports and the MLflow run pointer (an experiment's
    commit holds its run id: docs/pipeline.md), all cache: false, and its plots' data files, resolved through
    params.yaml's paths."""
    dvc = yaml.safe_load((repo_dir / "dvc.yaml").read_text())
    names = {next(iter(m)) for s in dvc["stages"].values() for m in s.get("metrics", [])}
    names |= {name for m in dvc["stages"]["evaluate"]["outs"] for name in m}
    names |= {f for p in dvc["plots"] for spec in p.values() for f in spec["y"]}
    paths = yaml.safe_load((repo_dir / "params.yaml").read_text())["paths"]
    return {re.sub(r"\$\{paths\.(\w+)\}", lambda m: paths[m[1]], n) for n in names}


def _metrics(rev: dict) -> dict[str, dict]:
    files = rev["data"]["metrics"]
    assert all("error" not in f and f["data"] for f in files.values()), (rev["name"], files)
    return {path: f["data"] for path, f in files.items()}


def test_two_experiments_are_compared_by_exp_show_metrics_diff_and_plots_diff_then_one_is_promoted(golden, golden_repo,
                                                                                                    mlflow_template,
                                                                                                    monkeypatch):
    repo = golden_repo
    # what a run leaves for git: dvc.lock and the metrics / plots files, nothing else (data, models and the other
    # reports are DVC's: ignored); the golden run's baseline commit holds them
    metric_files = _in_git(repo)
    assert {"reports/headline.json", "reports/metrics.json", "reports/latency.json", "reports/gates.json",
            "reports/prune_steps.json", "reports/mlflow_run.json"} <= metric_files
    assert sorted(status_after_run(golden)) == sorted(f"?? {f}" for f in {"dvc.lock", *metric_files})
    assert _run("git", "status", "--porcelain", "--untracked-files=all", cwd=repo) == ""
    baseline = json.loads((repo / "reports/metrics.json").read_text())
    fresh_store(mlflow_template, repo)  # the experiment promoted below logs its run (tracking on)

    # a cheap param: only evaluate reruns (prepare runs on every repro); one threshold passes the MACs gate, one not
    for name, threshold in (("passing", 1.5), ("failing", 100)):
        tracked = ["-S", "tracking.enabled=true"] if name == "passing" else []  # the one promoted below logs a run
        log = _run(*DVC, "exp", "run", "-n", name, "-S", f"gates.macs.threshold={threshold}", *tracked, cwd=repo)
        assert "Running stage 'evaluate'" in log and "Running stage 'prune'" not in log

    workspace, head = _json("exp", "show", cwd=repo)  # the workspace row, then the baseline commit with its experiments
    assert workspace["rev"] == "workspace"
    exps = {r["name"]: r for e in head["experiments"] for r in e["revs"]}
    assert set(exps) == {"passing", "failing"}
    shown = {"baseline": _metrics(head), **{n: _metrics(r) for n, r in exps.items()}}
    for name, metrics in shown.items():  # DVC's metrics: the headline alone, read from each revision's own commit
        assert set(metrics) == {"reports/headline.json"}, name
        headline = metrics["reports/headline.json"]
        assert headline["fewer_macs"] == baseline["macs_reduction"] and headline["faster_b1"] > 0, name
    assert [shown[n]["reports/headline.json"]["gates"] for n in ("baseline", "passing", "failing")] == \
        ["passed", "passed", "failed"]
    assert exps["failing"]["data"]["params"]["params.yaml"]["data"]["gates"]["macs"]["threshold"] == 100

    # the table as a terminal shows it (DVC's pager chops lines at the window's width): the headline first, readable
    table = _run(*DVC, "exp", "show", cwd=repo).splitlines()
    header = next(line for line in table if "Experiment" in line)[:120]
    assert header.split() == ["Experiment", "Created", "gates", "ships", "metric", "drop", "fewer_macs", "faster_b1",
                              "faster_bN"] + header.split()[9:], header
    rows = {name: next(line[:120] for line in table if name in line) for name in ("passing", "failing")}
    assert "passed" in rows["passing"] and "failed" in rows["failing"], rows

    diff = _json("metrics", "diff", "passing", "failing", cwd=repo)
    assert diff["reports/headline.json"]["gates"] == {"old": "passed", "new": "failed"}  # not a "-1"
    assert "fewer_macs" not in diff["reports/headline.json"]  # deterministic, so unchanged: not listed
    assert "failed to load" not in _run(*DVC, "metrics", "diff", cwd=repo)  # HEAD against the workspace (failing)
    plots = _json("plots", "diff", "passing", "failing", cwd=repo)
    assert "errors" not in plots
    assert {name: [d["revisions"] for d in data] for name, data in plots["data"].items()} == \
        {"accuracy_over_prune_steps": [["passing", "failing"]], "macs_over_prune_steps": [["passing", "failing"]]}

    import mlflow

    # docs/pipeline.md, "From an experiment to the registry": promote an experiment = apply it (its commit holds its
    # MLflow run id), then promote that run
    _run(*DVC, "exp", "apply", "passing", cwd=repo)
    assert _json("status", cwd=repo) == {"prepare": ["always changed"]}  # the workspace is that experiment, in sync
    run_id = json.loads((repo / "reports/mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    run = client.get_run(run_id)
    assert run.data.tags["gates"] == "passed" and run.data.params["gates.macs"] == "macs_reduction >= 1.5"
    # what `python -m pruning promote --run-id` calls (its own process: tests/e2e/test_concurrency.py)
    from pruning.config import load_config
    from pruning.tracking import promote

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo}/mlflow.db")
    promotion = promote(run_id, load_config(repo / "params.yaml"), repo)
    assert (promotion.model_name, promotion.version, promotion.alias) == ("tiny-int8", "1", "champion")
