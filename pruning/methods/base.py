"""What every method shares: the context it runs in, the outcome it returns, the step record of the pruning curve."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from pruning.checkpoint import Edit
from pruning.counting import count_macs
from pruning.data import Data
from pruning.distributed import DistributedConfig
from pruning.task import CLASSIFICATION, Task
from pruning.training import evaluate


@dataclass(frozen=True)
class Context:
    """What a method may use besides its own config."""

    data: Data  # the prepared train / test splits, input shape, class count
    seed: int
    device: str  # for training inside a method (auto | cpu | cuda)
    build: Callable[[], nn.Module]  # a fresh dense model, initialised exactly as the train stage initialised it
    latency_table: Path  # where latency measurements are kept between runs
    opset: int  # ONNX opset of the export stage (latency allocation times exported candidates)
    task: Task = CLASSIFICATION  # the loss criteria and fine-tuning use, the metric the step records report
    ranks: DistributedConfig = field(default_factory=DistributedConfig)  # processes for training inside a method


@dataclass
class Outcome:
    """What a method did."""

    model: nn.Module  # the pruned model (may be a new object)
    edits: list[Edit]  # replayed on the dense architecture by pruning.checkpoint, in order
    steps: list[dict[str, Any]]  # step 0 = the dense model, then one record per pruning step (see step_record)
    report: dict[str, Any] = field(default_factory=dict)  # the method's own facts


def describe_step(record: dict[str, Any], dense: dict[str, Any], metric: str) -> str:
    """A step record as a log line: ``ratio 0.25, MACs 115.5 k (1.74x fewer), params 11.3 k, accuracy 0.9694, loss
    0.1553`` (``dense``: the step-0 record, what the MACs are compared with; ``metric``: the task metric's name, which
    the record keeps under ``accuracy``)."""
    fewer = dense["macs"] / record["macs"] if record["macs"] else float("inf")
    return (f"ratio {record['ratio']:.3g}, MACs {record['macs'] / 1e3:.1f} k ({fewer:.2f}x fewer), params "
            f"{record['params'] / 1e3:.1f} k, {metric} {record['accuracy']:.4f}, loss {record['loss']:.4f}")


def step_record(step: int, ratio: float, model: nn.Module, ctx: Context) -> dict[str, Any]:
    """One point of the pruning curve: what was removed so far (``ratio``, the method's own measure), MACs, params,
    the task's metric on the test split (under ``accuracy``, the curve's fixed column) and loss, scored on
    ``ctx``'s data, device and task."""
    macs, params = count_macs(model, ctx.data.spec)
    accuracy, loss = evaluate(model, ctx.data.test, device=ctx.device, task=ctx.task)
    return {"step": step, "ratio": ratio, "macs": macs, "params": params, "accuracy": accuracy, "loss": loss}
