"""What every stage shares: reading the prepared data, provenance, and writing outputs only after the work is done."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pruning.config import Config
from pruning.data import read_arrays
from pruning.errors import DataError
from pruning.schedule import Split


@dataclass(frozen=True)
class Data:
    """The prepared splits as tensors, and the facts of data/meta.json."""

    train: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int


def load_data(cfg: Config) -> Data:
    """Read the prepare stage's outputs."""
    meta_path = Path(cfg.paths.data_meta)
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found: run the prepare stage first (python -m pruning prepare)")
    meta = json.loads(meta_path.read_text())
    x_tr, y_tr = read_arrays(cfg.paths.train_data)
    x_te, y_te = read_arrays(cfg.paths.test_data)
    return Data(Split(torch.from_numpy(x_tr), torch.from_numpy(y_tr)), Split(torch.from_numpy(x_te), torch.from_numpy(y_te)),
                tuple(meta["input_shape"]), int(meta["num_classes"]))


def params_hash(cfg: Config) -> str:
    """sha256 of the validated configuration (canonical JSON): two runs with equal params share it."""
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def git_commit() -> str | None:
    """The current commit, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def provenance(cfg: Config, stage: str) -> dict[str, Any]:
    """What a model file records about where it came from."""
    return {"stage": stage, "params_hash": params_hash(cfg), "git_commit": git_commit(), "seed": cfg.seed}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename), so a failed stage never leaves half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path, stage: str) -> Any:
    """Read a JSON output of an earlier stage (DataError naming that stage if it is missing)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: run the {stage} stage first (python -m pruning {stage})")
    return json.loads(path.read_text())
