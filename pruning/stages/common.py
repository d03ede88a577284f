"""What every stage shares: the prepared data, provenance, writing outputs only after the work is done, and turning a
library error that names one of its arguments into the params.yaml key."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pruning.atomic import write_bytes
from pruning.data import Data, load_data
from pruning.errors import DataError, PruningError, params_errors

if TYPE_CHECKING:
    from pruning.config import Config, PathsConfig


def paths(cfg: Config, root: str | Path) -> PathsConfig:
    """The configured paths, resolved against the workspace ``root``."""
    return cfg.paths.under(root)


def prepared_data(cfg: Config, root: str | Path) -> Data:
    """The prepare stage's outputs: tensors, or the streamed source restricted to the prepared split."""
    p = paths(cfg, root)
    data = cfg.data
    if data.path is not None:
        data = data.model_copy(update={"path": str(Path(root) / data.path)})
    with params_errors("data"):
        return load_data(p.train_data, p.test_data, p.data_meta, data)


def params_hash(cfg: Config) -> str:
    """sha256 of the validated configuration (canonical JSON): two runs with equal params share it."""
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def git_commit(root: str | Path = ".") -> str | None:
    """The commit checked out in ``root``, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
                             cwd=root)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def provenance(cfg: Config, stage: str, root: str | Path) -> dict[str, Any]:
    """What a model file records about where it came from."""
    return {"stage": stage, "params_hash": params_hash(cfg), "git_commit": git_commit(root), "seed": cfg.seed}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename), so a failed stage never leaves half a report."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n").encode())


def read_json(path: str | Path, stage: str) -> Any:
    """Read a JSON output of an earlier stage (DataError naming that stage if it is missing)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: run the {stage} stage first (python -m pruning {stage})")
    return json.loads(path.read_text())


def stamp(cfg: Config, root: str | Path, stage: str, start: float, end: float) -> None:
    """Record in paths.stage_times when ``stage`` last ran to completion in this workspace (Unix seconds). Why a file
    of its own: DVC runs each stage in its own process and may reuse a stage's outputs without running it; the
    evaluate stage, which logs the whole pipeline to MLflow, reads this to give every run its real start and end, and
    to tell a stage that ran in this pipeline from one whose outputs DVC reused."""
    path = Path(paths(cfg, root).stage_times)
    times = stage_times(path)
    times[stage] = {"start": start, "end": end}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, times)
    except (OSError, PruningError):  # bookkeeping for the MLflow view only: never the reason a stage fails
        pass


def stage_times(path: str | Path) -> dict[str, dict[str, Any]]:
    """paths.stage_times as a dict (empty when missing or unreadable: the times are then unknown, not an error)."""
    try:
        times = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return times if isinstance(times, dict) else {}
