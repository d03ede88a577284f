"""One search trial: prune -> fine-tune -> export -> quantize -> evaluate, the pipeline's own stage functions (no
second implementation), in a directory of its own with its own reports and its own gate verdict.

A trial starts from the pipeline's dense model: the train stage's outputs in the workspace (your weights or the trained
default) and the prepared data. It reads them where they are, through hard links (or copies across filesystems) at the
same relative paths, and writes only inside its directory; stages replace files atomically, so a trial never changes
what it links to. Its params (the base params with the trial's values put in: :func:`pruning.search.space.trial_config`)
are written beside its reports as params.yaml, so a trial can be reproduced (or applied) as it ran.

A trial whose pruning the library refuses (a ratio that would empty a layer, parity lost, ...) is a failed trial with
that one line, not a failed search.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pruning.atomic import write_bytes
from pruning.errors import DataError, PruningError
from pruning.stages import BY_NAME

if TYPE_CHECKING:
    from pruning.config import Config

TRIAL_STAGES = ("prune", "finetune", "export", "quantize", "evaluate")
CACHES = ("latency_table",)  # written by a trial's stage, but worth starting from the workspace's (measured latencies)


def inputs() -> tuple[str, ...]:
    """The paths.* keys a trial reads from the workspace: what its stages read and none of them writes."""
    written = {w for name in TRIAL_STAGES for w in BY_NAME[name].writes}
    return tuple(dict.fromkeys(r for name in TRIAL_STAGES for r in BY_NAME[name].reads if r not in written))


@dataclass(frozen=True)
class TrialResult:
    """What one trial measured (empty reports and ``error`` set when it failed)."""

    number: int
    params: dict[str, Any]
    directory: str
    seconds: float
    error: str | None = None
    passed: bool = False
    checks: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dst)


def link_inputs(workspace: Path, cfg: Config, trial_dir: Path) -> None:
    """The workspace's prepared data and dense model (and the caches) at the same relative paths in ``trial_dir``."""
    for key in inputs():
        src = workspace / getattr(cfg.paths, key)
        if not src.is_file():
            stage = next(s.name for s in BY_NAME.values() if key in s.writes)
            raise DataError(f"{src} not found: a search starts from the pipeline's dense model; run the {stage} stage "
                            f"first (python -m pruning {stage}, or dvc repro {stage})")
        _link(src, trial_dir / getattr(cfg.paths, key))
    for key in CACHES:
        src = workspace / getattr(cfg.paths, key)
        if src.is_file():
            _link(src, trial_dir / getattr(cfg.paths, key))


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def run_trial(workspace: str | Path, cfg: Config, trial_dir: str | Path, number: int,
              params: dict[str, Any]) -> TrialResult:
    """Run the trial stages of ``cfg`` (a trial's params) in ``trial_dir``; a library refusal is a failed trial."""
    workspace, trial_dir = Path(workspace), Path(trial_dir)
    start = time.perf_counter()
    trial_dir.mkdir(parents=True, exist_ok=True)
    link_inputs(workspace, cfg, trial_dir)
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"enabled": False})})  # the search logs
    write_bytes(trial_dir / "params.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).encode())
    base = {"number": number, "params": params, "directory": str(trial_dir)}
    try:
        for name in TRIAL_STAGES:
            BY_NAME[name].fn(cfg, trial_dir)
    except PruningError as exc:
        return TrialResult(**base, seconds=time.perf_counter() - start, error=str(exc))
    gates = _read(trial_dir / cfg.paths.gates)
    return TrialResult(**base, seconds=time.perf_counter() - start, passed=bool(gates["passed"]),
                       checks=gates["checks"], metrics=_read(trial_dir / cfg.paths.metrics),
                       latency=_read(trial_dir / cfg.paths.latency_metrics))


def constraints(result: TrialResult) -> dict[str, float]:
    """Optuna's constraint values of a trial, one per gate (``Trial.set_constraint``): <= 0 where the gate passed (by
    how much it cleared its threshold), > 0 where it failed; a failed trial violates ``trial``."""
    if result.error is not None or not result.checks:
        return {"trial": 1.0}
    out = {}
    for check in result.checks:
        if check["value"] is None:  # not measurable (NaN), or a timing too spread to trust
            out[check["name"]] = 1.0
            continue
        margin = check["value"] - check["threshold"]
        out[check["name"]] = -margin if check["op"] in (">=", ">") else margin
        if not check["passed"]:  # equal to the threshold on a strict op, or a distrusted timing: not feasible
            out[check["name"]] = max(out[check["name"]], 1e-9)
    return out
