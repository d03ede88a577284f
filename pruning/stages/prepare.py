"""prepare: data source -> data/train.npz, data/test.npz, data/meta.json."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pruning.config import Config
from pruning.data import load_split, save_arrays
from pruning.stages.common import write_json


@dataclass(frozen=True)
class PrepareResult:
    n_train: int
    n_test: int
    input_shape: tuple[int, ...]
    num_classes: int


def run_prepare(cfg: Config) -> PrepareResult:
    """Load ``data.source``, split it by ``seed`` and write the splits."""
    (x_tr, y_tr), (x_te, y_te) = load_split(cfg.data, cfg.seed)
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    result = PrepareResult(len(x_tr), len(x_te), tuple(int(s) for s in x_tr.shape[1:]), num_classes)
    save_arrays(cfg.paths.train_data, x_tr, y_tr)
    save_arrays(cfg.paths.test_data, x_te, y_te)
    write_json(cfg.paths.data_meta, {
        "source": cfg.data.source,
        "input_shape": list(result.input_shape),
        "num_classes": num_classes,
        "n_train": result.n_train,
        "n_test": result.n_test,
        "train_class_counts": np.bincount(y_tr, minlength=num_classes).tolist(),
    })
    return result
