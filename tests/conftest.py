"""Shared fixtures: a tiny configuration (seconds, not minutes) and a pipeline run once per test session."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]

TINY: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",  # every key dvc.yaml tracks must be in params.yaml (DVC refuses a missing one)
    "data": {"source": "digits"},
    "task": {"loss": "cross_entropy", "metric": "accuracy"},
    "model": {"arch": "resnet", "kwargs": {"widths": [8, 16, 32], "blocks": [1, 1, 1]}},
    "train": {"epochs": 4, "batch_size": 64, "lr": 0.05},
    "prune": {"criterion": "l2", "ratio": 0.5, "iterative_steps": 2, "step_finetune_epochs": 1, "round_to": None},
    "finetune": {"epochs": 2, "distill": {"enabled": True}},
    "export": {"parity_samples": 64, "opset": 17},
    "quantize": {"mode": "static", "calibration_samples": 64},
    "evaluate": {"batch_size": 16, "warmup": 1, "repeats": 3, "rounds": 1},
    "gates": {
        "macs": {"metric": "macs_reduction", "op": ">=", "threshold": 2.0},
        "parity": {"metric": "parity_score", "op": "<=", "threshold": 1.0},
    },
    "tracking": {"enabled": False},  # the MLflow tests turn it on, with a store in their tmp_path
    "registry": {"model_name": "tiny-int8"},
    "paths": yaml.safe_load((REPO / "params.yaml").read_text())["paths"],
}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base`` (a value of None in ``over`` sets None; a section naming another
    ``method`` replaces the whole section, since its keys are that method's; builder ``kwargs`` are replaced whole)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and value and key != "kwargs" and \
                value.get("method", out[key].get("method")) == out[key].get("method"):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_params(directory: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Write a tiny params.yaml (plus ``overrides``) into ``directory``."""
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(merge(TINY, overrides or {}), sort_keys=False))
    return path


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test from an empty directory (stage paths are relative to the working directory)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_cfg(in_tmp: Path):
    """The tiny Config, loaded from a params.yaml in the test's own directory."""
    from pruning.config import load_config

    return load_config(write_params(in_tmp))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where prepare + train already ran on the tiny config (shared, read-only for tests)."""
    from pruning.config import load_config
    from pruning.stages import BY_NAME

    root = tmp_path_factory.mktemp("trained")
    cfg = load_config(write_params(root))
    BY_NAME["prepare"].fn(cfg, root)  # stage functions take the workspace root: no chdir
    BY_NAME["train"].fn(cfg, root)
    return root


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    for sub in ("data", "models", "reports"):
        shutil.copytree(src / sub, dst / sub)
    shutil.copy(src / "params.yaml", dst / "params.yaml")
    return dst


@pytest.fixture
def trained_copy(trained: Path, in_tmp: Path) -> Path:
    """A private copy of ``trained`` as the working directory."""
    return _copy(trained, in_tmp)


@pytest.fixture(scope="session")
def finished(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where every stage already ran on the tiny config (shared, read-only for tests)."""
    from pruning.config import load_config
    from pruning.stages import STAGES

    root = _copy(trained, tmp_path_factory.mktemp("finished"))
    cfg = load_config(root / "params.yaml")
    for stage in STAGES[2:]:
        stage.fn(cfg, root)
    return root


@pytest.fixture
def finished_copy(finished: Path, in_tmp: Path) -> Path:
    """A private copy of ``finished`` as the working directory."""
    return _copy(finished, in_tmp)


@pytest.fixture
def one_thread():
    """One intra-op thread: tensors this small run ~100x slower with 2 threads on a busy 2-core machine."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
