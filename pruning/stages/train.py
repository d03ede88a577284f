"""train: the dense baseline from the zoo (or a user ``module:callable``) -> models/dense.pt."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pruning.config import Config
from pruning.errors import ModelError
from pruning.stages.common import load_data, provenance, write_json
from pruning.surgery import count_macs, example_input, save_model
from pruning.train import Optim, evaluate, fit
from pruning.zoo import build_model


@dataclass(frozen=True)
class TrainResult:
    accuracy: float
    loss: float
    macs: int
    params: int


def run_train(cfg: Config) -> TrainResult:
    """Train the dense model with SGD + cosine schedule, seeded by ``seed``."""
    data = load_data(cfg)
    if cfg.model.input_shape is not None and tuple(cfg.model.input_shape) != data.input_shape:
        raise ModelError(f'Invalid "model.input_shape": {cfg.model.input_shape} but the data samples have shape '
                         f"{list(data.input_shape)}")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.arch, cfg.model.kwargs, data.input_shape, data.num_classes)
    try:
        with torch.no_grad():
            out = model.eval()(example_input(data.input_shape))
    except Exception as exc:  # any failure of user code on our input shape
        raise ModelError(f"model.arch {cfg.model.arch!r} fails on input shape {list(data.input_shape)}: {exc}") from None
    if tuple(out.shape) != (1, data.num_classes):
        raise ModelError(f"model.arch {cfg.model.arch!r} outputs shape {tuple(out.shape)}, expected (batch, "
                         f"{data.num_classes}) logits")
    t = cfg.train
    history = fit(model, data.train.x, data.train.y, Optim(t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay),
                  cfg.seed, "train dense", x_test=data.test.x, y_test=data.test.y)
    accuracy, loss = evaluate(model, data.test.x, data.test.y)
    macs, params = count_macs(model, data.input_shape)
    save_model(cfg.paths.dense_model, model, arch=cfg.model.arch, kwargs=cfg.model.kwargs,
               input_shape=data.input_shape, num_classes=data.num_classes, meta=provenance(cfg, "train"))
    write_json(cfg.paths.train_report, {"accuracy": accuracy, "loss": loss, "macs": macs, "params": params,
                                        "epochs": history})
    return TrainResult(accuracy, loss, macs, params)
