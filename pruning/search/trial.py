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
from dataclasses import asdict, dataclass, field, replace
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
    # the front's second measurement, alone (study.py): {passed, checks, latency}; None: measured once
    remeasured: dict[str, Any] | None = None
    worker: str | None = None  # the Dask worker that ran it (None: the search's own process)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def shipped(self) -> str:
        """The variant the trial ships (evaluate's choice): ``quantized`` or ``pruned``."""
        return "quantized" if self.latency.get("shipped") == "quantized" else "pruned"

    def final(self) -> TrialResult:
        """This trial as measured last: with the re-measurement's latency and gate verdict where there is one."""
        if self.remeasured is None:
            return self
        return replace(self, passed=self.remeasured["passed"], checks=self.remeasured["checks"],
                       latency=self.remeasured["latency"])


@dataclass(frozen=True)
class TrialSpec:
    """What a worker needs to run one trial (picklable: it travels to Dask workers)."""

    workspace: str
    cfg: Config
    directory: str
    number: int
    params: dict[str, Any]
    threads: int | None = None  # torch's intra-op threads in the trial (None: leave them as they are)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dst)


def check_inputs(workspace: Path, cfg: Config) -> None:
    """A DataError naming the first input a trial needs that the workspace lacks, and the stage that makes it."""
    for key in inputs():
        src = workspace / getattr(cfg.paths, key)
        if not src.is_file():
            stage = next(s.name for s in BY_NAME.values() if key in s.writes)
            raise DataError(f"{src} not found: a search starts from the pipeline's dense model; run the {stage} stage "
                            f"first (python -m pruning {stage}, or dvc repro {stage})")


def check_fresh(workspace: Path) -> None:
    """In a DVC workspace, a DataError when a stage that makes a trial's inputs is stale (its params or inputs changed
    since it ran): the trials would start from a dense model the params no longer describe."""
    from pruning.record import describe, is_dvc_workspace, recording

    if not is_dvc_workspace(workspace):
        return
    makers = [s for s in BY_NAME.values() if set(s.writes) & set(inputs())]
    with recording(workspace) as dvc:
        for stage in makers:
            name = stage.name
            if stage.unchanged is not None:  # DVC runs it every time (prepare): its own check says whether it would
                if not stage.outputs_unchanged(workspace / "params.yaml"):
                    raise DataError(f"the {name} stage's outputs are not the ones it would write now (its data, "
                                    f"params or code changed): run `dvc repro {name}` (or python -m pruning run) first")
                continue
            changes = dvc.stale(name)
            if changes:
                raise DataError(f"the {name} stage is stale ({describe(changes)}): a search starts from the pipeline's "
                                f"dense model as params.yaml describes it; run `dvc repro {name}` (or python -m pruning "
                                f"run) first")


def link_inputs(workspace: Path, cfg: Config, trial_dir: Path) -> None:
    """The workspace's prepared data and dense model (and the caches) at the same relative paths in ``trial_dir``."""
    check_inputs(workspace, cfg)
    for key in inputs():
        _link(workspace / getattr(cfg.paths, key), trial_dir / getattr(cfg.paths, key))
    for key in CACHES:
        src = workspace / getattr(cfg.paths, key)
        if src.is_file():
            _link(src, trial_dir / getattr(cfg.paths, key))


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def run_trial(spec: TrialSpec) -> TrialResult:
    """Run the trial stages of ``spec.cfg`` (a trial's params) in its directory; a library refusal is a failed trial.
    Runs where it is called: in the search's process or on a Dask worker (which may be another machine that sees the
    workspace at the same path: your ``module:callable`` code is imported from there, as params.yaml's loading does)."""
    from pruning.schema import importable_from

    workspace, trial_dir, cfg, number, params = (Path(spec.workspace), Path(spec.directory), spec.cfg, spec.number,
                                                 spec.params)
    importable_from(workspace)
    if spec.threads is not None:
        import torch

        torch.set_num_threads(spec.threads)
    start = time.perf_counter()
    trial_dir.mkdir(parents=True, exist_ok=True)
    link_inputs(workspace, cfg, trial_dir)
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"enabled": False})})  # the search logs
    write_bytes(trial_dir / "params.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).encode())
    base = {"number": number, "params": params, "directory": str(trial_dir), "worker": _worker()}
    try:
        for name in TRIAL_STAGES:
            BY_NAME[name].fn(cfg, trial_dir)
    except PruningError as exc:
        return TrialResult(**base, seconds=time.perf_counter() - start, error=str(exc))
    gates = _read(trial_dir / cfg.paths.gates)
    return TrialResult(**base, seconds=time.perf_counter() - start, passed=bool(gates["passed"]),
                       checks=gates["checks"], metrics=_read(trial_dir / cfg.paths.metrics),
                       latency=_read(trial_dir / cfg.paths.latency_metrics))


def _worker() -> str | None:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):  # not on a Dask worker
        return None


def trial_params(trial_dir: str | Path) -> Config:
    """The params a trial ran with (its params.yaml, written by :func:`run_trial`), validated as params.yaml is."""
    from pruning.config import validate

    path = Path(trial_dir) / "params.yaml"
    return validate(yaml.safe_load(path.read_text()), str(path))


def remeasure(result: TrialResult) -> TrialResult:
    """Time a finished trial's models again with the evaluate stage (its paired protocol), alone, and judge its gates
    on that: the result with ``remeasured`` set. Its reports in the trial directory are then the re-measured ones."""
    trial_dir = Path(result.directory)
    cfg = trial_params(trial_dir)
    BY_NAME["evaluate"].fn(cfg, trial_dir)
    gates = _read(trial_dir / cfg.paths.gates)
    return replace(result, remeasured={"passed": bool(gates["passed"]), "checks": gates["checks"],
                                       "latency": _read(trial_dir / cfg.paths.latency_metrics)})


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
