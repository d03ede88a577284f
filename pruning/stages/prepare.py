"""prepare: data source -> data/train.npz, data/test.npz, data/meta.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pruning.data import load_split, save_arrays
from pruning.stages.common import params_errors, paths, write_json

if TYPE_CHECKING:
    from pruning.config import Config


@dataclass(frozen=True)
class PrepareResult:
    n_train: int
    n_test: int
    input_shape: tuple[int, ...]
    num_classes: int


def run(cfg: Config, root: str | Path = ".") -> PrepareResult:
    """Load ``data.source``, split it by ``seed`` and write the splits."""
    p = paths(cfg, root)
    with params_errors("data"):
        (x_tr, y_tr), (x_te, y_te) = load_split(cfg.data, cfg.seed)
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    result = PrepareResult(len(x_tr), len(x_te), tuple(int(s) for s in x_tr.shape[1:]), num_classes)
    save_arrays(p.train_data, x_tr, y_tr)
    save_arrays(p.test_data, x_te, y_te)
    write_json(p.data_meta, {
        "source": cfg.data.source,
        "input_shape": list(result.input_shape),
        "num_classes": num_classes,
        "n_train": result.n_train,
        "n_test": result.n_test,
        "train_class_counts": np.bincount(y_tr, minlength=num_classes).tolist(),
    })
    return result
