"""Typed mirror of params.yaml, validated once at the edge.

Every section is a frozen pydantic model with ``extra="forbid"``: an unknown key, a wrong type or a value out of range
becomes a :class:`~pruning.errors.ConfigError` whose one-line message names the key and the file. Nothing downstream
reads params.yaml or threads raw dicts around.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pruning.errors import ConfigError
from pruning.gates import KNOWN_METRICS

DEFAULT_PARAMS = Path("params.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Section):
    """Where the samples come from and how they are split."""

    source: Literal["digits", "mnist1d", "npz"] = "digits"
    path: str | None = None  # npz only: arrays x, y (split by seed) or x_train, y_train, x_test, y_test
    test_fraction: float = Field(0.2, gt=0, lt=1)
    mnist1d_samples: int = Field(5000, ge=100)  # mnist1d only: samples generated offline by make_dataset


class ModelConfig(_Section):
    """The dense architecture: a zoo name or ``module:callable`` (called with ``**kwargs``)."""

    arch: str = "resnet"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    input_shape: list[int] | None = None  # per-sample shape a user model expects; checked against the data


class TrainConfig(_Section):
    """Dense baseline training (SGD + cosine schedule)."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)


class PruneConfig(_Section):
    """Dependency-graph channel removal with torch-pruning.

    ``allocation: macs`` (default): exactly one of ``ratio`` (fraction of channels removed per group) and
    ``target_macs_reduction`` (e.g. 2.0: search the ratio whose pruned model has at most half the dense MACs) is set.
    ``allocation: latency``: channels per group chosen by measured ONNX Runtime latency (pruning/latency.py), to exactly
    one of ``target_speedup`` (measured) and ``target_macs_reduction``; ``ratio`` is null.
    """

    criterion: Literal["l1", "l2", "taylor", "hessian", "bn_scale", "lamp", "random", "loss_change"] = "l2"
    scope: Literal["uniform", "global"] = "uniform"
    ratio: float | None = Field(0.3, gt=0, lt=1)
    target_macs_reduction: float | None = Field(None, gt=1)
    iterative_steps: int = Field(1, ge=1)
    # how the ratio grows over the steps: linear, or cubic (Zhu & Gupta 2017: fast early, gentle late)
    schedule: Literal["linear", "cubic"] = "linear"
    step_finetune_epochs: int = Field(0, ge=0)  # fine-tuning epochs between iterative steps
    step_lr: float = Field(0.01, gt=0)
    round_to: int | None = Field(None, ge=1)
    allocation: Literal["macs", "latency"] = "macs"
    target_speedup: float | None = Field(None, gt=1)  # allocation latency: dense / pruned latency, measured on ORT
    latency_batch_size: int = Field(1, ge=1)  # allocation latency: the batch size and threads the model will run at
    latency_threads: int = Field(1, ge=1)
    max_layer_ratio: float = Field(0.9, gt=0, le=1)  # cap for any one layer, mostly for global scope
    ignored_layers: list[str] = Field(default_factory=list)  # module names; the classifier is always kept
    calibration_batches: int = Field(4, ge=1)  # batches for taylor/hessian gradients and BatchNorm recalibration
    bn_recalibration: bool = True
    # depth pruning first: remove this many residual blocks (each becomes its shortcut), ranked by depth_criterion
    depth_blocks: int = Field(0, ge=0)
    depth_criterion: Literal["loss_change", "norm"] = "loss_change"
    oracle_max_channels: int = Field(4096, ge=1)  # loss_change: at most this many loss evaluations per step
    oracle_max_seconds: float = Field(600.0, gt=0)  # loss_change: and at most this long

    @model_validator(mode="after")
    def _one_target(self) -> PruneConfig:
        if self.allocation == "latency":
            if self.ratio is not None:
                raise ValueError("allocation latency chooses each group's ratio: set prune.ratio to null")
            if (self.target_speedup is None) == (self.target_macs_reduction is None):
                raise ValueError("allocation latency: set exactly one of prune.target_speedup and "
                                 "prune.target_macs_reduction (the other to null)")
            if self.scope != "uniform":
                raise ValueError("allocation latency ranks groups itself: prune.scope must be uniform")
        else:
            if self.target_speedup is not None:
                raise ValueError("prune.target_speedup needs prune.allocation: latency")
            if (self.ratio is None) == (self.target_macs_reduction is None):
                raise ValueError("set exactly one of prune.ratio and prune.target_macs_reduction (the other to null)")
        return self


class DistillConfig(_Section):
    """Knowledge distillation from the dense model (Hinton et al. 2015)."""

    enabled: bool = True
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)  # weight of the soft-target term


class FinetuneConfig(_Section):
    """Recovery training of the pruned model."""

    epochs: int = Field(15, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    distill: DistillConfig = Field(default_factory=DistillConfig)


class ExportConfig(_Section):
    """ONNX export and the parity check against torch."""

    exporter: Literal["torchscript", "dynamo"] = "torchscript"  # why torchscript: see pruning/export.py
    opset: int = Field(17, ge=13, le=20)
    parity_tolerance: float = Field(1e-4, gt=0)
    parity_samples: int = Field(256, ge=1)


class QuantizeConfig(_Section):
    """ONNX Runtime INT8 quantization of the pruned model."""

    mode: Literal["static", "dynamic", "none"] = "static"
    per_channel: bool = True
    # uint8 activations + int8 weights measured 3.8x faster than int8/int8 QDQ here (ORT 1.32, AVX-512 VNNI CPU)
    activation_type: Literal["uint8", "int8"] = "uint8"
    calibration_samples: int = Field(256, ge=1)
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"


class EvaluateConfig(_Section):
    """Accuracy and latency measurement through ONNX Runtime."""

    threads: int = Field(1, ge=1)  # intra-op threads, fixed so latencies compare
    batch_size: int = Field(256, ge=1)  # the "batch N" of latency_ms_bN
    warmup: int = Field(10, ge=0)
    repeats: int = Field(50, ge=3)
    rounds: int = Field(5, ge=1)  # alternating rounds over the models; each latency is the median of rounds


class GateConfig(_Section):
    """One acceptance check: ``value op threshold``.

    ``metric`` is a key of reports/metrics.json or reports/latency.json (``accuracy_drop``, ``speedup_bN``) or
    ``variant.field`` (``quantized.accuracy``).
    ``relative_to_dense`` turns a ``variant.field`` value into its difference to (``diff``) or ratio over (``ratio``)
    the dense model's value of the same field.
    """

    metric: str
    op: Literal["<=", ">=", "<", ">"]
    threshold: float
    relative_to_dense: Literal["diff", "ratio"] | None = None

    @model_validator(mode="after")
    def _known_metric(self) -> GateConfig:
        if self.metric not in KNOWN_METRICS:
            raise ValueError(f"unknown metric {self.metric!r} (known: {', '.join(sorted(KNOWN_METRICS))})")
        if self.relative_to_dense and "." not in self.metric:
            raise ValueError(f"relative_to_dense needs a 'variant.field' metric, got {self.metric!r}")
        return self


class TrackingConfig(_Section):
    """MLflow tracking: one parent run per pipeline run, a nested run per stage (logged by the evaluate stage).

    The tracking URI is not a param: MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db`` in the working directory.
    """

    enabled: bool = True
    experiment: str = Field("pruning", min_length=1)


class RegistryConfig(_Section):
    """MLflow model registry: where the INT8 model goes and how a new version can become ``champion``."""

    model_name: str = Field("pruned-int8", min_length=1)
    primary_metric: str = "quantized.accuracy"  # a metrics.json name; the champion is replaced only if beaten
    greater_is_better: bool = True

    @model_validator(mode="after")
    def _known_metric(self) -> RegistryConfig:
        if self.primary_metric not in KNOWN_METRICS:
            raise ValueError(f"unknown metric {self.primary_metric!r} (known: {', '.join(sorted(KNOWN_METRICS))})")
        return self


class ScheduleConfig(_Section):
    """When ``python -m pruning serve`` runs the flow (Prefect cron schedule)."""

    cron: str = "0 3 * * *"
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _valid_cron(self) -> ScheduleConfig:
        fields = self.cron.split()
        if len(fields) != 5:
            raise ValueError(f"expected 5 cron fields (minute hour day month weekday), got {len(fields)}")
        return self


class BenchMethod(_Section):
    """One pruning configuration compared by ``python -m pruning bench criteria``."""

    criterion: Literal["l1", "l2", "taylor", "hessian", "bn_scale", "lamp", "random", "loss_change"]
    scope: Literal["uniform", "global"] = "uniform"
    bn_recalibration: bool = True
    distill: bool = False  # knowledge distillation from the base model during the fine-tuning epochs
    allocation: Literal["macs", "latency"] = "macs"
    target_speedup: float | None = Field(None, gt=1)  # allocation latency: dense / pruned latency, measured on ORT
    latency_batch_size: int = Field(1, ge=1)  # allocation latency: the batch size and threads the model will run at
    latency_threads: int = Field(1, ge=1)
    max_layer_ratio: float = Field(0.9, gt=0, le=1)


class BenchConfig(_Section):
    """The criteria benchmark: mnist1d (generated offline), one base model per seed, every method at equal MACs."""

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
    # python -m pruning bench latency: ImageNet-shape models are slow, so fewer runs than evaluate.* (still alternated)
    latency_warmup: int = Field(2, ge=0)
    latency_repeats: int = Field(5, ge=3)
    latency_rounds: int = Field(5, ge=1)
    # python -m pruning bench sparse: unstructured magnitude pruning and lottery tickets on the same base model
    unstructured_sparsity: float = Field(0.9, gt=0, lt=1)
    lottery_rounds: int = Field(8, ge=1)  # sparsity after r rounds: 1 - (1 - per_round)^r (8 x 0.2 -> 83 %)
    lottery_prune_per_round: float = Field(0.2, gt=0, lt=1)
    lottery_epochs: int = Field(10, ge=1)
    lottery_rewind_epoch: int = Field(1, ge=0)  # 0 = original init (Frankle & Carbin), k = weights after k epochs


class PathsConfig(_Section):
    """Every file a stage reads or writes. Required in params.yaml, their one home: dvc.yaml templates the same keys
    with ``${paths.*}``, and the code has no path literals of its own."""

    train_data: str
    test_data: str
    data_meta: str
    dense_model: str
    pruned_model: str
    finetuned_model: str
    dense_onnx: str
    pruned_onnx: str
    quantized_onnx: str
    train_report: str
    prune_report: str
    prune_steps: str
    finetune_report: str
    export_report: str
    quantize_report: str
    metrics: str  # deterministic: the same data + params give the same bytes
    latency_metrics: str  # measured latencies and the speedups derived from them (noisy by nature)
    gates: str
    mlflow_run: str
    bench_dir: str  # python -m pruning bench writes its json / md / png here
    latency_table: str  # prune.allocation latency: per-layer ORT latencies, kept across runs (DVC persist)


class Config(_Section):
    """The whole of params.yaml."""

    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    gates: dict[str, GateConfig] = Field(default_factory=dict)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)
    paths: PathsConfig


def _describe(err: dict[str, Any], file: str) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f'Unknown key "{key}" in {file}: remove it or fix its spelling'
    if err["type"] == "missing":
        return f'Missing key "{key}" in {file}'
    msg = err["msg"].removeprefix("Value error, ")
    return f'Invalid "{key}" in {file}: {err.get("input")!r} ({msg})'


def parse_config(raw: Any, file: str = "params.yaml") -> Config:
    """Validate an already-parsed mapping. Raises ConfigError naming the first bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{file} must hold a mapping of sections, got {type(raw).__name__}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], file)) from None
    _check_references(cfg, file)
    return cfg


def load_config(path: str | Path = DEFAULT_PARAMS) -> Config:
    """Read and validate params.yaml (``yaml.safe_load``; never executes anything)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Parameters file {path} not found (run from the repository root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_config(raw, str(path))


def _check_references(cfg: Config, file: str) -> None:
    """Check what the schema cannot: files that must exist and callables that must import."""
    if cfg.data.source == "npz":
        if not cfg.data.path:
            raise ConfigError(f'Missing "data.path" in {file}: data.source "npz" needs the path of an .npz file')
        if not Path(cfg.data.path).is_file():
            raise ConfigError(f'Invalid "data.path" in {file}: data file {cfg.data.path} not found')
    elif cfg.data.path is not None:
        raise ConfigError(f'Invalid "data.path" in {file}: only data.source "npz" reads a file (set it to null)')
    if ":" in cfg.model.arch:
        resolve_callable(cfg.model.arch, f'"model.arch" in {file}')


def resolve_callable(spec: str, where: str) -> Any:
    """Import ``module:callable``; ConfigError naming ``where`` if that fails."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"Invalid {where}: {spec!r} (expected 'module:callable')")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a config problem here
        raise ConfigError(f"Invalid {where}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"Invalid {where}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"Invalid {where}: {spec!r} is not callable")
    return obj
