"""The stages: one function per stage (``pruning.stages.<name>.run(cfg, root)``), each taking the validated Config and
the workspace root and returning a typed result. They are the only code that reads and writes stage files; everything
they call is library code.

:data:`STAGES` is the one table of stages. The CLI generates one verb per row, the Prefect flow one task per row,
MLflow tracking one nested run per row, and a test checks dvc.yaml against it (names, commands, params, deps, outs).
Adding a stage = one file here and one row. This module imports nothing heavy: a stage's code is imported when run.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One row: a stage of the pipeline."""

    name: str  # CLI verb, dvc.yaml stage, flow task, MLflow nested run, module pruning/stages/<name>.py
    help: str  # one line for `python -m pruning --help`
    params: tuple[str, ...]  # params.yaml keys it reads (dvc.yaml `params:`)
    reads: tuple[str, ...]  # paths.* keys of its inputs (dvc.yaml `deps:`)
    writes: tuple[str, ...]  # paths.* keys of its outputs (dvc.yaml `outs:` / `metrics:`)
    reports: tuple[str, ...] = ()  # JSON reports among writes: MLflow metrics, curves and artifacts of its run
    artifacts: tuple[str, ...] = ()  # other writes logged with its run as they are
    models: dict[str, str] = field(default_factory=dict)  # MLflow model name -> paths.* key, logged with its run
    retries: int = 0  # flow task retries: only for stages that do I/O against a service
    gated: bool = False  # its result carries the gate verdict (the verb gets --strict)
    # report key -> the params.yaml key whose value it repeats (how the stage ran): a param of its MLflow run, not a
    # metric; a report value the stage computed instead (prune's ratio, searched for when prune.ratio is unset) stays one
    settings: dict[str, str] = field(default_factory=dict)
    # "module:function" (params.yaml path -> bool), importing no torch: True when the stage's outputs are the ones it
    # would write now, and the command DVC runs may return at once (a stage DVC runs on every repro: always_changed)
    unchanged: str | None = None

    def outputs_unchanged(self, params: Any) -> bool:
        """The ``unchanged`` check on ``params`` (False when the stage has none)."""
        if self.unchanged is None:
            return False
        module, _, name = self.unchanged.partition(":")
        return bool(getattr(importlib.import_module(module), name)(params))

    @property
    def fn(self) -> Callable[..., Any]:
        """The stage function, imported on first use; each call records when it started and ended
        (:func:`pruning.stages.common.stamp`: the MLflow runs of the pipeline show real times)."""
        run = importlib.import_module(f"pruning.stages.{self.name}").run

        @functools.wraps(run)
        def timed(cfg: Any, root: Any = ".") -> Any:
            from pruning.stages.common import stamp

            if getattr(cfg, "threads", None) is not None:  # params.yaml's threads: training's numerics depend on it
                import torch

                torch.set_num_threads(cfg.threads)
            start = time.time()
            result = run(cfg, root)
            stamp(cfg, root, self.name, start, time.time())  # after success only: a failing stage writes nothing
            return result

        return timed


_DATA = ("train_data", "test_data", "data_meta")

STAGES: tuple[Stage, ...] = (
    Stage("prepare", "Load data.source, split it by seed, write the splits (data/); DVC runs it on every repro, "
          "where it returns at once while its data, params and code are unchanged.",
          params=("seed", "data"), reads=(), writes=_DATA, reports=("data_meta",),
          unchanged="pruning.fingerprint:unchanged"),
    Stage("train", "Train the dense baseline (model.arch), or load model.weights (train.epochs 0: as they are).",
          params=("seed", "device", "threads", "distributed", "model", "task", "train"), reads=(*_DATA, "weights_dir"),
          writes=("dense_model", "train_report"),
          reports=("train_report",)),
    Stage("prune", "Prune the dense model with the method params.yaml names in prune.method: channel (the default), "
          "depth, unstructured, lottery or complexity_aware (docs/methods.md).",
          params=("seed", "device", "threads", "distributed", "model.arch", "task", "prune", "export.opset"),
          reads=(*_DATA, "dense_model"),
          writes=("pruned_model", "prune_report", "prune_steps", "latency_table"),
          reports=("prune_report", "prune_steps"), artifacts=("latency_table",),
          settings={"ratio": "prune.ratio", "iterative_steps": "prune.iterative_steps"}),
    Stage("finetune", "Fine-tune the pruned model, optionally distilling from the dense one.",
          params=("seed", "device", "threads", "distributed", "model.arch", "task", "finetune"),
          reads=(*_DATA, "dense_model", "pruned_model"),
          writes=("finetuned_model", "finetune_report"), reports=("finetune_report",)),
    Stage("export", "Export dense and pruned models to ONNX; fail unless parity with torch holds.",
          params=("model.arch", "export"), reads=("test_data", "data_meta", "dense_model", "finetuned_model"),
          writes=("dense_onnx", "pruned_onnx", "export_report"), reports=("export_report",),
          models={"pruned_fp32": "pruned_onnx"},
          settings={"opset": "export.opset", "parity_samples": "export.parity_samples", "atol": "export.parity_atol",
                    "rtol": "export.parity_rtol"}),
    Stage("quantize", "Quantize the pruned ONNX model with ONNX Runtime (static INT8 QDQ by default).",
          params=("seed", "quantize", "evaluate"), reads=("train_data", "data_meta", "pruned_onnx"),
          writes=("quantized_onnx", "quantize_report"), reports=("quantize_report",), models={"int8": "quantized_onnx"},
          settings={"calibration_samples": "quantize.calibration_samples"}),
    Stage("evaluate", "Measure dense / pruned / INT8 in ONNX Runtime, write metrics.json, check the gates.",
          params=("data", "model.arch", "task", "evaluate", "gates", "tracking"),
          reads=("test_data", "data_meta", "dense_model", "finetuned_model", "dense_onnx", "pruned_onnx",
                 "quantized_onnx", "train_report", "prune_report", "prune_steps", "finetune_report", "export_report",
                 "quantize_report", "latency_table"),
          writes=("metrics", "latency_metrics", "gates", "headline", "mlflow_run"),
          reports=("metrics", "latency_metrics", "gates"),
          retries=2, gated=True),
)

BY_NAME = {s.name: s for s in STAGES}
