"""Typed mirror of params.yaml, validated once at the edge.

Every section is a frozen pydantic model with ``extra="forbid"`` (:class:`pruning.schema.Section`): an unknown key, a
wrong type or a value out of range becomes a :class:`~pruning.errors.ConfigError` whose one-line message names the
key and the file. Nothing downstream reads params.yaml or threads raw dicts around.

The ``prune`` section is the chosen method's own config, a discriminated union on ``prune.method``
(:data:`pruning.methods.MethodConfig`): each method declares its section in its own file. The defaults here are the
values params.yaml ships with (tests/test_config.py checks it), and the params reference (docs/params.md) is generated from these
models (``python -m pruning params-doc``), so a value has one home.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pruning.acceptance.gates import GateConfig, check_metric
from pruning.data import DataConfig
from pruning.distributed import DistributedConfig
from pruning.errors import ConfigError
from pruning.methods import METHODS, MethodConfig, default_config
from pruning.references import check_references, check_tracked
from pruning.schema import NotPlain, Section, TooLarge, importable_from, safe_load_unique, workspace_path_problem
from pruning.search.config import SearchConfig
from pruning.task import TaskConfig
from pruning.training import FinetuneConfig, TrainConfig

DEFAULT_PARAMS = Path("params.yaml")


class ModelConfig(Section):
    """The dense architecture: a zoo name or ``module:callable`` (called with ``**kwargs``)."""

    arch: str = Field("resnet", description="resnet | resnet1d | vgg | mobilenetv2 | resnet50 | mobilenetv2_imagenet "
                      "| hf (a Hugging Face save_pretrained directory: model.weights) | package.module:callable (your "
                      "own)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="builder arguments (zoo builders also get "
                                   "in_channels and num_classes; hf: config overrides, e.g. num_labels)")
    input_shape: list[Annotated[int, Field(ge=1, le=1_000_000)]] | None = Field(
        None, description="per-sample shape your model expects; checked against the data")
    weights: str | None = Field(None, description="your trained weights for arch: a state dict (.pt/.pth, or a "
                                "checkpoint dict holding one) or .safetensors; hf: the save_pretrained directory; "
                                "inside paths.weights_dir (DVC tracks it)")
    output: str | None = Field(None, description="the output the task scores, for a model that returns several (a key "
                               "of its dict / Hugging Face ModelOutput); null: logits, else the first")


class ExportConfig(Section):
    """ONNX export and the parity check against torch."""

    exporter: Literal["torchscript", "dynamo"] = Field("torchscript", description="torchscript (fast, default) | "
                                                       "dynamo (torch.export based)")
    opset: int = Field(17, ge=13, le=20, description="ONNX opset")
    parity_atol: float = Field(1e-4, ge=0, le=1, description="parity on real test samples: |ONNX Runtime - torch| <= atol + "
                               "rtol * |torch| for every output (numpy.allclose), or the stage fails and publishes "
                               "nothing")
    parity_rtol: float = Field(1e-5, ge=0, le=1, description="the relative part (fp32 rounding grows with the values)")
    parity_samples: int = Field(256, ge=1, le=1_000_000, description="test samples of the parity check")


class QuantizeConfig(Section):
    """ONNX Runtime INT8 quantization of the pruned model."""

    mode: Literal["auto", "static", "dynamic", "none"] = Field(
        "auto", description="auto (static for convolutional graphs, else dynamic) | static (QDQ, calibrated) | "
        "dynamic (MatMul/Gemm weights int8, activations at run time: transformers) | none (the INT8 column is an fp32 "
        "copy)")
    per_channel: bool = Field(True, description="per-channel weight scales")
    activation_type: Literal["uint8", "int8"] = Field("uint8", description="uint8 | int8: the "
                                                      "activations' type (weights are int8; docs/design.md)")
    calibration_samples: int = Field(256, ge=1, le=1_000_000, description="training samples that calibrate the activation ranges")
    calibrate_method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="minmax | entropy | "
                                                                         "percentile")
    # "all" by default: a timed choice is not reproducible, and a partial selection rarely pays (docs/design.md,
    # "Measured reasons")
    select: Literal["auto", "all"] = Field("all", description="static only: all (every operator ORT can, no "
                                           "timing) | auto (also leave depthwise / squeeze-excitation / elementwise "
                                           "ops in fp32; keep the fastest, timed at batch 1 as evaluate times, a "
                                           "partial selection only when 10 % faster; not reproducible bit for bit)")


class EvaluateConfig(Section):
    """Accuracy and latency measurement through ONNX Runtime (pruning/runtime/timing.py)."""

    threads: int = Field(1, ge=1, le=256, description="ORT intra-op threads (fixed so latencies compare)")
    batch_size: int = Field(32, ge=1, le=65_536, description="the N of latency_ms_bN")
    sequence_length: int | None = Field(None, ge=1, le=1_000_000, description="models with token inputs: the "
                                        "sequence length latency is timed at (null: the data's own)")
    warmup: int = Field(5, ge=0, le=10_000, description="untimed runs per model, batch size and round")
    repeats: int = Field(20, ge=3, le=10_000, description="timed runs per model, batch size and round")
    rounds: int = Field(5, ge=1, le=1_000, description="rounds; the models alternate within each, latencies are medians over "
                        "rounds")
    ship: Literal["auto", "int8", "fp32"] = Field("auto", description="the model the gates judge as shipped and the "
                                                  "registry registers: auto (INT8 where it pays, else the pruned fp32) "
                                                  "| int8 | fp32")
    int8_min_speedup: float = Field(1.1, gt=0, le=1_000, description="auto: INT8 ships only if at least this much faster than "
                                    "pruned fp32 at batch 1 ...")
    int8_max_metric_loss: float = Field(0.01, ge=0, le=1_000, description="... and losing at most this much of task.metric "
                                        "against pruned fp32")
    max_latency_spread: float = Field(3.0, gt=1, le=1_000, description="p95 / p50 of any timing above this: the "
                                      "machine is too busy; measured again (twice), then latency gates fail as unreliable")


class TrackingConfig(Section):
    """MLflow tracking: one parent run per pipeline run, a nested run per stage (logged by the evaluate stage).

    The tracking URI is not a param: MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db`` in the workspace.
    """

    enabled: bool = Field(True, description="log the pipeline run to MLflow")
    experiment: str = Field("pruning", min_length=1, description="MLflow experiment")


MAX_MODEL_NAME = 256  # the registry's name column (String(256)): a server on Postgres or MySQL refuses a longer one


def model_name_problem(name: str) -> str | None:
    """Why MLflow's registry would refuse ``name`` as a registered model's name, or None.

    MLflow's own rule (``mlflow.utils.validation._validate_model_name``, with the file store's extra ``%``), written
    out here because importing mlflow takes seconds and loading params.yaml must not; tests/test_config.py checks this
    rule against MLflow's functions on a list of names."""
    if not name.strip():
        return "empty"
    if bad := [c for c in "/:%" if c in name]:
        return f"a registered model's name cannot contain {' or '.join(repr(c) for c in bad)}"
    norm = posixpath.normpath(name)
    if norm != name or norm == "." or norm.startswith(("..", "/")):
        return "MLflow treats names as paths: a name cannot be '.' or start with '..'"
    if len(name) > MAX_MODEL_NAME:
        return f"longer than the registry's {MAX_MODEL_NAME} characters"
    return None


class RegistryConfig(Section):
    """MLflow model registry: where the INT8 model goes and how a new version can become ``champion``."""

    model_name: str = Field("pruned-int8", min_length=1, description="registered model of the INT8 ONNX versions "
                            "(MLflow's rule: no '/', ':' or '%', at most 256 characters)")

    @field_validator("model_name")
    @classmethod
    def _registrable(cls, name: str) -> str:
        if problem := model_name_problem(name):
            raise ValueError(problem)
        return name
    primary_metric: str = Field("shipped.metric", description="a metric a new version must beat to become "
                                "champion (shipped.metric: the task.metric of the model that ships)")
    greater_is_better: bool | None = Field(None, description="direction of primary_metric (null: the task metric's)")

    @model_validator(mode="after")
    def _known_metric(self) -> RegistryConfig:
        check_metric(self.primary_metric)
        return self


class ScheduleConfig(Section):
    """When ``python -m pruning serve`` runs the flows (Prefect cron schedules)."""

    cron: str = Field("0 3 * * *", description="cron expression (5 fields) of the pipeline")
    search_cron: str | None = Field(None, description="cron expression of the search (python -m pruning search), "
                                    "served beside the pipeline; null: not served")
    timezone: str = Field("UTC", description="time zone of the cron expressions")

    @model_validator(mode="after")
    def _valid_cron(self) -> ScheduleConfig:
        # cronsim: what Prefect's own cron validation (its vendored croniter) needs seconds of imports for (docs/
        # design.md, "Measured reasons"); a Prefect dependency, so no new package
        import datetime
        import zoneinfo

        from cronsim import CronSim, CronSimError

        for name, cron in (("cron", self.cron), ("search_cron", self.search_cron)):
            if cron is None:
                continue
            fields = cron.split()
            if len(fields) != 5:
                raise ValueError(f"{name}: expected 5 cron fields (minute hour day month weekday), got {len(fields)}")
            try:
                CronSim(cron, datetime.datetime(2026, 1, 1))
            except CronSimError as exc:
                raise ValueError(f"{name} {cron!r}: {exc}") from None
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        return self


class PathsConfig(Section):
    """Every file a stage reads or writes, relative to the workspace. Required in params.yaml, their one home:
    dvc.yaml templates the same keys with ``${paths.*}``, and the code has no path literals of its own."""

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
    headline: str  # the few figures DVC shows first (dvc exp show, metrics diff): its only metrics file
    mlflow_run: str
    stage_times: str  # when each stage last ran here (start, end): the MLflow runs' real times; not a DVC output
    bench_dir: str  # the benchmarks (bench/) write their json / md / png here
    latency_table: str  # latency allocation: per-layer ORT latencies, kept across runs (DVC persist)
    weights_dir: str  # model.weights lives here: the train stage's DVC dependency (a changed file reruns train)
    search_dir: str  # python -m pruning search: its study, a directory per trial, trials.json, pareto.json, the figure

    @model_validator(mode="after")
    def _inside_the_workspace(self) -> PathsConfig:
        """Every path a relative one inside the workspace, outside what the pipeline must never overwrite (git, its
        code, params.yaml and the DVC files), each its own (two outputs on one file would overwrite each other), and
        no output inside the inputs' weights_dir."""
        values = self.model_dump()
        for key, value in values.items():
            problem = workspace_path_problem(value)
            if problem:
                raise ValueError(f"paths.{key} {value!r}: {problem}")
        seen: dict[str, str] = {}
        for key, value in values.items():
            norm = Path(value).as_posix()
            if norm in seen:
                raise ValueError(f"paths.{key} and paths.{seen[norm]} are both {value!r}: each output needs its own file")
            seen[norm] = key
        parts = {key: Path(value).parts for key, value in values.items()}  # once: every load of params.yaml runs this
        for key, outer in parts.items():
            if key in ("bench_dir", "weights_dir"):  # directories
                continue
            for other, inner in parts.items():
                if other != key and inner[:len(outer)] == outer:
                    raise ValueError(f"paths.{other} {values[other]!r} lies inside paths.{key} {values[key]!r}, a file")
        weights = parts["weights_dir"]
        for key, inner in parts.items():
            if key != "weights_dir" and inner[:len(weights)] == weights:
                raise ValueError(f"paths.{key} {values[key]!r} lies in paths.weights_dir, the train stage's input")
        return self

    def under(self, root: str | Path) -> PathsConfig:
        """The same paths, resolved against the workspace ``root``."""
        return self.model_copy(update={k: str(Path(root) / v) for k, v in self.model_dump().items()})


class Config(Section):
    """The whole of params.yaml."""

    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds the split, the initialisation, batch order, calibration samples")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where training runs: auto (cuda when "
                                                   "available) | cpu | cuda")
    threads: int | None = Field(None, ge=1, le=1024, description="torch's intra-op threads in the stages that "
                                "train (train, prune, finetune): null = torch's default here (the physical cores). "
                                "Training's float sums depend on it: set it where two runs must give the same bytes "
                                "(a search's trials and dvc repro; other machines)")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    prune: MethodConfig = Field(default_factory=default_config)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    gates: dict[str, GateConfig] = Field(default_factory=dict, description="name: {metric, op, threshold, "
                                         "relative_to_dense}")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    paths: PathsConfig


# sections that left params.yaml: where they live now (an old params.yaml is told, not just refused)
MOVED = {"bench": "bench/params.yaml (the benchmarks' settings: no stage reads them)"}


def _describe(err: dict[str, Any], file: str) -> str:
    loc = [str(p) for p in err["loc"]]
    if len(loc) > 1 and loc[0] == "prune" and loc[1] in METHODS:
        loc.pop(1)  # the union's tag: the user wrote prune.ratio, not prune.channel.ratio
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        if key in MOVED:
            return f'The "{key}" section of {file} moved to {MOVED[key]}: move it there'
        return f'Unknown key "{key}" in {file}: remove it or fix its spelling'
    if err["type"] == "missing":
        return f'Missing key "{key}" in {file}'
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] == "unknown_method":
        if not isinstance(value, dict):
            return f'Invalid "{key}" in {file}: {value!r} (expected a section with "method" and its params)'
        return f'Invalid "{key}.method" in {file}: {value.get("method")!r} ({msg})'
    if isinstance(value, dict):  # a whole section: its validator's message says what is wrong
        return f'Invalid "{key}" in {file}: {msg}'
    return f'Invalid "{key}" in {file}: {value!r} ({msg})'


def parse_config(raw: Any, file: str = "params.yaml") -> Config:
    """Validate an already-parsed mapping. Raises ConfigError naming the first bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{file} must hold a mapping of sections, got {type(raw).__name__}")
    cfg = validate(raw, file)
    check_references(cfg, file, Path(file).parent)
    return cfg


def validate(raw: dict[str, Any], file: str) -> Config:
    """The schema's half of :func:`parse_config` (no files or references checked): also a search trial's params."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], file)) from None


def load_config(path: str | Path = DEFAULT_PARAMS) -> Config:
    """Read and validate params.yaml (a safe YAML loader: the file itself never executes anything; the user's own
    ``module:callable`` references are imported, from the workspace, to check them)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Parameters file {path} not found (run from the repository root or pass --params)")
    raw = read_yaml(path)
    if isinstance(raw, dict):
        check_tracked(raw, path)
    importable_from(path.parent)  # module:callable references live in the workspace
    return parse_config(raw, str(path))


def read_yaml(path: Path) -> Any:
    """An existing YAML file's content (safe loader, bounded alias expansion); anything unreadable is a ConfigError
    naming the file. The benchmarks read their own file with it too (bench/config.py)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    try:
        raw = safe_load_unique(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path} nests too deeply to be a params file") from None
    except TooLarge as exc:
        raise ConfigError(f"{path} {exc}") from None
    except NotPlain as exc:
        raise ConfigError(f'Invalid "{exc.key}" in {path} (line {exc.line}): {exc.what}') from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{path} holds a value that cannot be read ({str(exc).split(';')[0]})") from None
    return raw
