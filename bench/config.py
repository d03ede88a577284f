"""The benchmarks' settings, bench/params.yaml, validated here when a benchmark runs. They live outside params.yaml
because no pipeline stage reads them (so `dvc exp show`, a run's MLflow params and its params_hash leave them out); a
benchmark still loads params.yaml for what it shares with the pipeline (paths.bench_dir, export, evaluate, ...)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from rich.console import Console

from pruning.config import Config, load_config, read_yaml
from pruning.criteria import CriterionName
from pruning.errors import ConfigError, PruningError
from pruning.schema import Section


class BenchMethod(Section):
    """One pruning configuration compared by the criteria benchmark."""

    criterion: CriterionName
    scope: Literal["uniform", "global"] = "uniform"
    bn_recalibration: bool = True
    distill: bool = False  # knowledge distillation from the base model during the fine-tuning epochs
    max_layer_ratio: float = Field(0.9, gt=0, le=1)


class BenchConfig(Section):
    """mnist1d (generated offline), one base model per seed, every method at equal MACs; plus the latency and sparse
    benchmarks' budgets."""

    arch: str = "resnet1d"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    samples: int = Field(5000, ge=200)  # mnist1d samples (80 % train / 20 % test, stratified)
    base_epochs: int = Field(40, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(0.1, gt=0)
    finetune_lr: float = Field(0.01, gt=0)
    seeds: int = Field(5, ge=1)
    targets: list[float] = Field(default_factory=lambda: [2.0, 4.0, 8.0, 16.0])
    short_epochs: int = Field(3, ge=1)  # the equal fine-tuning budget of the "ft" and "gradual" regimes
    long_epochs: int = Field(20, ge=1)  # the long regime ...
    long_max_target: float = Field(2.0, gt=1)  # ... run only up to this MACs target (time)
    calibration_samples: int = Field(256, ge=16)  # gradients, BatchNorm recalibration, the oracle
    methods: dict[str, BenchMethod] = Field(default_factory=dict)
    quick_targets: list[float] = Field(default_factory=lambda: [2.0, 8.0])
    # bench latency: ImageNet-shape models are slow, so fewer runs than evaluate.* (still alternated)
    latency_warmup: int = Field(2, ge=0)
    latency_repeats: int = Field(5, ge=3)
    latency_rounds: int = Field(5, ge=1)
    # bench sparse: unstructured magnitude pruning and lottery tickets on the same base model
    unstructured_sparsity: float = Field(0.9, gt=0, lt=1)
    lottery_rounds: int = Field(8, ge=1)  # sparsity after r rounds: 1 - (1 - per_round)^r (8 x 0.2 -> 83 %)
    lottery_prune_per_round: float = Field(0.2, gt=0, lt=1)
    lottery_epochs: int = Field(10, ge=1)
    lottery_rewind_epoch: int = Field(1, ge=0)  # 0 = original init (Frankle & Carbin), k = weights after k epochs
    # bench complexity: complexity-aware training vs prune-after-training at matched MACs and total epochs
    complexity_kwargs: dict[str, Any] = Field(default_factory=lambda: {"widths": [16, 32, 64], "blocks": [3, 3, 3]})
    complexity_epochs: int = Field(30, ge=2)  # E: every method's total epochs
    complexity_dense_epochs: int = Field(18, ge=1)  # E1: the baselines' dense training (they fine-tune E - E1)
    complexity_retrain_epochs: int = Field(18, ge=0)  # R: complexity-aware's retrain of its structure (search E - R)


BENCH_PARAMS = Path("bench") / "params.yaml"  # relative to the repository root, where benchmarks run


def bench_config(raw: Any, file: str = str(BENCH_PARAMS)) -> BenchConfig:
    """The validated settings (ConfigError naming the key and the file, as for params.yaml)."""
    if not isinstance(raw, dict | None):
        raise ConfigError(f"{file} must hold a mapping of settings, got {type(raw).__name__}")
    try:
        return BenchConfig.model_validate(raw or {})
    except ValidationError as exc:
        e = exc.errors()[0]
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            raise ConfigError(f'Unknown key "{key}" in {file}: remove it or fix its spelling') from None
        raise ConfigError(f'Invalid "{key}" in {file}: {e.get("input")!r} ({e["msg"]})') from None


def load_bench(path: str | Path = BENCH_PARAMS) -> BenchConfig:
    """Read and validate bench/params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Benchmark settings {path} not found (run from the repository root)")
    return bench_config(read_yaml(path), str(path))


def main(fn: Callable[[Config, BenchConfig, Path], Any], params: str | Path = "params.yaml",
         bench_params: str | Path = BENCH_PARAMS) -> int:
    """Load params.yaml and bench/params.yaml, run ``fn(cfg, bench, out_dir)``; a PruningError is one line, exit 2.
    The benchmark's and the library's INFO lines go to stderr, one plain line each when piped (a benchmark runs for
    minutes to hours: its progress shows in a file or a CI log as it goes, :mod:`pruning.progress`)."""
    from pruning.progress import configure

    configure("pruning", "bench", "__main__")  # a benchmark run as `python -m bench.<name>` logs as __main__
    try:
        cfg = load_config(params)
        fn(cfg, load_bench(bench_params), Path(cfg.paths.bench_dir))
    except PruningError as exc:
        Console(stderr=True).print(f"[red]error:[/] {' '.join(str(exc).split())}", highlight=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover - a module, not a benchmark
    sys.exit("run python -m bench.<name>")


def write_report(out_dir: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """A benchmark's report: ``name``.json (every record and figure) and ``name``.md (what the docs include)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / f"{name}.md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")
