"""Training under torch DDP (pruning/distributed.py): two gloo ranks fine-tune the golden run's pruned model like one
process does, the stage alone writes the outputs, complexity-aware training runs in two ranks and the stage rebuilds
its result from rank 0's edits, and a killed rank ends the stage with one line, no hang."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pruning.checkpoint import load_model
from pruning.config import load_config
from pruning.stages import BY_NAME
from pruning.task import build_task
from pruning.training import evaluate
from tests.conftest import write_params

READS = ("train_data", "test_data", "data_meta", "dense_model", "pruned_model")
NOISE = 0.03  # accuracy on the 360 test digits: two ranks' BatchNorm statistics come from half batches


def _workspace(golden: Path, dest: Path, nproc: int, over: dict | None = None, reads: tuple[str, ...] = READS) -> Path:
    cfg = load_config(golden / "params.yaml")
    for key in reads:
        path = Path(getattr(cfg.paths, key))
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(golden / path, dest / path)
    write_params(dest, {"distributed": {"nproc": nproc}, **(over or {})})
    return dest


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_two_gloo_ranks_fine_tune_like_one_process_and_only_the_stage_writes(golden, tmp_path):
    results, written = {}, {}
    for nproc in (1, 2):
        root = _workspace(golden, tmp_path / f"n{nproc}", nproc)
        before = _files(root)
        cfg = load_config(root / "params.yaml")
        results[nproc] = BY_NAME["finetune"].fn(cfg, root)
        written[nproc] = _files(root) - before
        model, _ = load_model(root / cfg.paths.finetuned_model, cfg.model.arch)  # the result reloads and scores as reported
        assert evaluate(model, *_test_split(cfg, root), task=build_task(cfg.task))[0] == results[nproc].accuracy
    assert written[1] == written[2] == {"models/finetuned.pt", "reports/finetune.json", "reports/stage_times.json"}
    print({n: (r.accuracy_before, r.accuracy) for n, r in results.items()})
    assert abs(results[2].accuracy - results[1].accuracy) <= NOISE, results
    assert results[2].accuracy > results[2].accuracy_before  # it trained


def test_complexity_aware_training_runs_in_two_gloo_ranks_and_the_stage_replays_rank_0_s_edits(golden, tmp_path):
    over = {"prune": {"method": "complexity_aware", "epochs": 4, "warmup_epochs": 1, "strength": 20.0,
                      "theta_lr": 0.3, "patience": 1, "retrain_epochs": 0}}  # the search in ranks (retrain: fit's)
    root = _workspace(golden, tmp_path / "ca", 2, over, READS[:-1])
    before = _files(root)
    cfg = load_config(root / "params.yaml")
    result = BY_NAME["prune"].fn(cfg, root)
    assert _files(root) - before == {"models/pruned.pt", "reports/prune.json", "reports/prune_steps.json",
                                     "reports/stage_times.json", "models/latency_table.json"}
    report = json.loads((root / cfg.paths.prune_report).read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1, 2, 3, 4]
    assert not any(math.isnan(e["test_accuracy"]) for e in report["epochs"])  # rank 0 evaluated every epoch
    assert report["edits"] and result.macs_reduction > 1.2 and report["undecided_at_end"] <= 0.5
    model, record = load_model(root / cfg.paths.pruned_model, cfg.model.arch)  # the file replays the same edits
    assert evaluate(model, *_test_split(cfg, root), task=build_task(cfg.task))[0] == result.accuracy
    assert sum(p.numel() for p in model.parameters()) == report["pruned_params"]


def _test_split(cfg, root):
    from pruning.stages.common import prepared_data

    return (prepared_data(cfg, root).test,)


def test_a_killed_rank_ends_the_stage_with_one_line_within_a_minute(golden, tmp_path):
    root = _workspace(golden, tmp_path / "ws", 2)
    env = {**os.environ, "PRUNING_CRASH_AT": "ddp:rank1"}
    out = subprocess.run([sys.executable, "-m", "pruning", "finetune", "--params", str(root / "params.yaml")],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == ["error: training rank 1 of 2 was killed by SIGKILL; the other ranks were stopped"], out.stderr
    assert not (root / "models/finetuned.pt").exists() and not (root / "reports/finetune.json").exists()
