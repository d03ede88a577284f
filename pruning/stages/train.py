"""train: the dense baseline -> models/dense.pt: the architecture of ``model.arch`` (zoo or a user ``module:callable``),
trained from its initialisation, or from ``model.weights`` (a user's trained model), or — ``train.epochs: 0`` — those
weights as they are, evaluated and recorded as the baseline every later stage compares with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pruning.checkpoint import save_model
from pruning.counting import count_macs
from pruning.data import SCORED_OUTPUT, Data, forward
from pruning.distributed import fit
from pruning.errors import ModelError, params_errors
from pruning.hf import HF, from_directory, record_kwargs
from pruning.stages.common import paths, prepared_data, provenance, write_json
from pruning.task import Task, build_task
from pruning.training import evaluate
from pruning.weights import load_weights
from pruning.zoo import build_model

if TYPE_CHECKING:
    from pruning.config import Config


@dataclass(frozen=True)
class TrainResult:
    accuracy: float
    loss: float
    macs: int
    params: int


def run(cfg: Config, root: str | Path = ".") -> TrainResult:
    """Train the dense model with SGD + cosine schedule, seeded by ``seed`` (or load ``model.weights``)."""
    p = paths(cfg, root)
    data = prepared_data(cfg, root)
    task = build_task(cfg.task)
    if cfg.model.input_shape is not None and tuple(cfg.model.input_shape) != data.input_shape:
        raise ModelError(f'Invalid "model.input_shape": {cfg.model.input_shape} but the data samples have shape '
                         f"{list(data.input_shape) if data.input_shape else 'several inputs'}")
    torch.manual_seed(cfg.seed)
    with params_errors("model"):
        if cfg.model.arch == HF:  # its weights come with it; the model file records its config
            model = from_directory(Path(root) / cfg.model.weights, cfg.model.kwargs)
            kwargs = record_kwargs(model)
        else:
            model = build_model(cfg.model.arch, cfg.model.kwargs, data.input_shape, data.num_classes)
            kwargs = cfg.model.kwargs
    if cfg.model.output is not None:
        setattr(model, SCORED_OUTPUT, cfg.model.output)  # model files keep it: every later stage scores it too
    _check_output(model, data, task, cfg)
    if cfg.model.weights is not None and cfg.model.arch != HF:
        with params_errors("model"):
            load_weights(model, Path(root) / cfg.model.weights, f"model.arch {cfg.model.arch!r}")
    t = cfg.train
    history = []
    if t.epochs:
        history = fit(cfg.distributed, model, data.train, t.optim(), cfg.seed,
                      "train dense", test=data.test, device=cfg.device, task=task)
    accuracy, loss = evaluate(model, data.test, device=cfg.device, task=task)
    macs, params = count_macs(model, data.spec)
    save_model(p.dense_model, model, arch=cfg.model.arch, kwargs=kwargs, input_shape=data.input_shape,
               num_classes=data.num_classes, meta=provenance(cfg, "train", root), example=data.example)
    write_json(p.train_report, {task.metric_name: accuracy, "loss": loss, "macs": macs, "params": params,
                                "weights": cfg.model.weights, "epochs": history})
    return TrainResult(accuracy, loss, macs, params)


def _check_output(model: nn.Module, data: Data, task: Task, cfg: Config) -> None:
    """The model runs on a real sample and gives what the task scores: (batch, classes) logits for the default
    classification task. ModelError saying what was expected and which keys to change."""
    example = data.example
    try:
        with torch.no_grad():
            out = forward(model.eval(), example)
    except KeyError as exc:
        if cfg.model.output is None or cfg.model.output not in str(exc):
            raise ModelError(f"model.arch {cfg.model.arch!r} fails on a sample of the data: KeyError: {exc}") from None
        raise ModelError(f'Invalid "model.output": {exc.args[0]}') from None
    except Exception as exc:  # any failure of user code on a real sample
        what = f"input shape {list(data.input_shape)}" if data.input_shape else "a sample of the data"
        raise ModelError(f"model.arch {cfg.model.arch!r} fails on {what}: {type(exc).__name__}: {exc}") from None
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"model.arch {cfg.model.arch!r} returns {type(out).__name__}: one output tensor (batch, "
                         "outputs) is expected")
    if task.classification and tuple(out.shape) != (1, data.num_classes):
        raise ModelError(f"model.arch {cfg.model.arch!r} outputs shape {tuple(out.shape)}, expected (batch, "
                         f"{data.num_classes}) logits: the default task (task.loss cross_entropy, task.metric accuracy) "
                         "scores class logits; for another output set task.loss and task.metric"
                         + (f" (model.kwargs num_labels: {data.num_classes} gives a hf model a new head of that width)"
                            if cfg.model.arch == HF else ""))
    if out.shape[0] != 1:
        raise ModelError(f"model.arch {cfg.model.arch!r} outputs shape {tuple(out.shape)} for a batch of one: the "
                         "first axis must be the batch")
