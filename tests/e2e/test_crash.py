"""A kill at the worst moment leaves nothing half-written and nothing a rerun cannot repair.

Each stage runs as ``python -m pruning <stage>`` in its own process group and SIGKILLs that group itself at a
deterministic point (:mod:`pruning.faults`, ``PRUNING_CRASH_AT``): an output fully written to its temporary file but not
yet renamed over the target, a new MLflow store created but not yet in place, a parent run open with some stages
logged, a registered version without its tags and alias. The rerun, without the crash point, must finish and leave
valid outputs and a usable store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest

from pruning import checkpoint
from pruning.config import load_config
from pruning.faults import ENV
from pruning.fingerprint import RECORD
from pruning.stages import BY_NAME
from tests.conftest import write_params

# the stage, the output the kill lands in (its file name), and how to tell the file is whole: one stage per way of
# writing an output (prune and finetune publish their model files as train does, through checkpoint.save_model:
# test_the_model_stages_publish_through_one_writer holds them to it)
TARGETS = {
    "prepare": ("data/train.npz", lambda p: np.load(p, allow_pickle=False)["x"].shape[0] > 0),
    "train": ("models/dense.pt", lambda p: checkpoint.load_record(p)["arch"] == "resnet"),
    "export": ("models/dense.onnx", lambda p: onnx.checker.check_model(str(p), full_check=True) is None),
    "quantize": ("models/pruned.int8.onnx", lambda p: onnx.checker.check_model(str(p), full_check=True) is None),
    "evaluate": ("reports/metrics.json", lambda p: "dense" in json.loads(Path(p).read_text())),
}


def _workspace(finished: Path, root: Path, tracking: bool = False) -> Path:
    for sub in ("data", "models", "reports"):
        shutil.copytree(finished / sub, root / sub)
    write_params(root, {"tracking": {"enabled": tracking, "experiment": "crash"}})
    (root / "data" / RECORD).unlink()  # prepare's record gone: its command runs in full, as it must to be killed
    return root


def _pruning(root: Path, *args: str, crash: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    env.pop(ENV, None)
    if crash:
        env[ENV] = crash
    return subprocess.run([sys.executable, "-m", "pruning", *args], cwd=root, env=env, capture_output=True, text=True,
                          start_new_session=True, timeout=600)  # its own process group: the kill takes only it


def _leftovers(path: Path) -> list[Path]:
    return list(path.parent.glob(f".{path.name}.*.tmp"))


@pytest.mark.parametrize("stage", list(TARGETS))
def test_a_stage_killed_while_publishing_leaves_the_old_file_whole_and_a_rerun_completes(stage, finished, tmp_path):
    root = _workspace(finished, tmp_path)
    rel, whole = TARGETS[stage]
    target = root / rel
    before = target.read_bytes()

    killed = _pruning(root, stage, crash=f"write:{target.name}")
    assert killed.returncode == -9, killed.stdout + killed.stderr  # SIGKILL, at the crash point
    if stage == "train":  # output captured, not a terminal: training still shows its progress, one line per epoch
        assert all(f"train dense epoch {e}/4" in killed.stdout + killed.stderr for e in (1, 2, 3, 4)), killed.stderr
    assert target.read_bytes() == before  # the previous output, untouched and whole
    assert _leftovers(target), "the kill did not land between writing and publishing"

    # the rerun, in this process (the same stage function the verb calls, without another interpreter start-up)
    BY_NAME[stage].fn(load_config(root / "params.yaml"), root)
    assert whole(target)
    assert _leftovers(target) == []  # the dead writer's temporary file went with the next write


def test_the_model_stages_publish_through_one_writer():
    """train's kill above stands for prune's and finetune's: all three write their model file with
    checkpoint.save_model (save_like calls it), whose temporary file + rename the kill lands in."""
    import inspect

    from pruning.stages import finetune, prune, train

    for module, call in ((train, "save_model(p.dense_model"), (prune, "save_model(p.pruned_model"),
                         (finetune, "save_like(p.finetuned_model")):
        source = inspect.getsource(module)
        assert call in source and "torch.save" not in source and "open(" not in source, module.__name__
    assert "save_model(" in inspect.getsource(checkpoint.save_like)


def _runs(root: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("crash")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_kills_in_store_creation_logging_and_promotion_are_repaired_by_the_rerun(finished, tmp_path, monkeypatch):
    """Each kill in a process of its own; each rerun in this process (the code the verb calls)."""
    from pruning.tracking import promote

    root = _workspace(finished, tmp_path, tracking=True)
    db = root / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")  # this process's reruns: the same store
    cfg = load_config(root / "params.yaml")

    # 1. killed while creating the store: no store at all (never a half-migrated one); the rerun creates it
    killed = _pruning(root, "evaluate", crash="mlflow:store")
    assert killed.returncode == -9, killed.stderr
    assert not db.exists() and _leftovers(db)

    # 2. killed with the parent run open: the rerun marks it (and its nested runs) KILLED and logs a complete one
    killed = _pruning(root, "evaluate", crash="mlflow:logging")
    assert killed.returncode == -9, killed.stderr
    assert db.is_file() and not _leftovers(db)
    assert [r.info.status for r in _runs(root) if "mlflow.parentRunId" not in r.data.tags] == ["RUNNING"]
    BY_NAME["evaluate"].fn(cfg, root)
    runs = _runs(root)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED"]
    assert "RUNNING" not in {r.info.status for r in runs}
    run_id = json.loads((root / "reports" / "mlflow_run.json").read_text())["run_id"]
    assert [r.info.run_id for r in parents if r.info.status == "FINISHED"] == [run_id]

    # 3. killed right after registering: the rerun finishes the tags and the alias decision, on the same version
    killed = _pruning(root, "promote", "--run-id", run_id, crash="promote:registered")
    assert killed.returncode == -9, killed.stderr
    client = mlflow.MlflowClient()
    (version,) = client.search_model_versions("name='tiny-int8'")
    assert "decision" not in version.tags and not version.aliases
    rerun = promote(run_id, cfg, root)
    assert (rerun.version, rerun.alias) == ("1", "champion"), rerun
    (version,) = client.search_model_versions("name='tiny-int8'")
    assert version.tags["gates"] == "passed" and version.tags["decision"] == "first champion"
    assert any(k.startswith("gate.") for k in version.tags)
    assert client.get_model_version_by_alias("tiny-int8", "champion").version == version.version
    again = promote(run_id, cfg, root)
    assert (again.version, again.alias, again.reason) == ("1", "champion", "already registered (first champion)")
