"""Data sources -> numpy arrays ``x: (N, C, ...) float32``, ``y: (N,) int64``, the deterministic split, and the
prepared splits as tensors (:class:`Split`, :class:`Data`) with the calibration samples drawn from them.

Nothing here downloads: digits ship inside scikit-learn, mnist1d is generated offline with its ``make_dataset``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pruning.errors import DataError

if TYPE_CHECKING:
    from pruning.config import DataConfig

Arrays = tuple[np.ndarray, np.ndarray]

# Samples per calibration batch: criterion gradients, BatchNorm recalibration, depth-pruning scores (a method's
# ``calibration_batches`` counts these). ONNX Runtime's INT8 calibration has its own (pruning/runtime/quantize.py).
CALIBRATION_BATCH = 64


@dataclass
class Split:
    """Tensors of one data split."""

    x: torch.Tensor
    y: torch.Tensor

    def take(self, idx: torch.Tensor) -> Split:
        return Split(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class Data:
    """The prepared splits as tensors, and the facts of data/meta.json."""

    train: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int


def calibration_batches(n: int, batches: int, seed: int) -> list[torch.Tensor]:
    """Indices of ``batches`` batches of :data:`CALIBRATION_BATCH` samples out of ``n``, from a seeded permutation
    (cycling through it when ``n`` is small)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [order[(b * CALIBRATION_BATCH) % n:][:CALIBRATION_BATCH] for b in range(batches)]


def calibration_sample(split: Split, batches: int, seed: int) -> Split:
    """``batches`` x :data:`CALIBRATION_BATCH` samples of ``split`` as one set (seeded; fewer if the split is smaller)."""
    order = torch.randperm(len(split.x), generator=torch.Generator().manual_seed(seed))
    return split.take(order[: batches * CALIBRATION_BATCH])


def _digits() -> Arrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8), values in [0, 1]
    return x, bunch.target.astype(np.int64)


def _mnist1d(samples: int, seed: int) -> Arrays:
    # make_dataset builds the data from templates in memory; get_dataset (the other entry point) downloads a pickle.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = samples
    args.seed = seed
    d = make_dataset(args)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)[:, None]  # (N, 1, 40)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    return x, y


def _check(x: np.ndarray, y: np.ndarray, where: str) -> Arrays:
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise DataError(f"{where}: expected x of shape (N, ...) and y of shape (N,), got {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels y must be integers (class ids), got dtype {y.dtype}")
    if y.min() < 0:
        raise DataError(f"{where}: labels y must be >= 0, got {int(y.min())}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{where}: x contains NaN or infinite values")
    if x.ndim == 2:  # (N, L) vectors: add the channel axis convolutions expect
        x = x[:, None]
    return x.astype(np.float32), y.astype(np.int64)


def _npz(path: str) -> tuple[Arrays, Arrays | None]:
    """Read a user .npz (never with pickles): ``x, y`` or ``x_train, y_train, x_test, y_test``."""
    if not Path(path).is_file():
        raise DataError(f"data file {path} not found", field="path")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"data file {path} is not a readable .npz without pickles: {exc}") from None
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        train = _check(arrays["x_train"], arrays["y_train"], f"{path} (x_train/y_train)")
        test = _check(arrays["x_test"], arrays["y_test"], f"{path} (x_test/y_test)")
        if train[0].shape[1:] != test[0].shape[1:]:
            raise DataError(f"{path}: x_train samples {train[0].shape[1:]} differ from x_test {test[0].shape[1:]}")
        return train, test
    if {"x", "y"} <= arrays.keys():
        return _check(arrays["x"], arrays["y"], f"{path} (x/y)"), None
    raise DataError(f"{path}: expected arrays x, y or x_train, y_train, x_test, y_test; found {sorted(arrays)}")


def load_split(cfg: DataConfig, seed: int) -> tuple[Arrays, Arrays]:
    """Load the configured source and split it deterministically (stratified by class, seeded).

    Returns:
        ``((x_train, y_train), (x_test, y_test))``.
    """
    from sklearn.model_selection import train_test_split

    test: Arrays | None = None
    if cfg.source == "digits":
        full = _digits()
    elif cfg.source == "mnist1d":
        full = _mnist1d(cfg.mnist1d_samples, seed)
    else:
        assert cfg.path is not None  # checked when params.yaml was loaded
        full, test = _npz(cfg.path)
    if test is not None:
        return full, test
    x, y = full
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=cfg.test_fraction, random_state=seed, stratify=y)
    except ValueError as exc:  # e.g. a class with a single sample cannot be stratified
        raise DataError(f"cannot split the data with a test fraction of {cfg.test_fraction}: {exc}",
                        field="test_fraction") from None
    return (x_tr, y_tr), (x_te, y_te)


def save_arrays(path: str | Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write one split as an uncompressed .npz (x, y)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file handle keeps numpy from appending .npz to the name
        np.savez(f, x=x, y=y)


def read_arrays(path: str | Path) -> Arrays:
    """Read a split written by :func:`save_arrays`."""
    if not Path(path).is_file():
        raise DataError(f"{path} not found: run the prepare stage first (python -m pruning prepare)")
    with np.load(path, allow_pickle=False) as f:
        return f["x"], f["y"]


def load_data(train: str | Path, test: str | Path, meta: str | Path) -> Data:
    """The prepare stage's outputs as tensors."""
    if not Path(meta).is_file():
        raise DataError(f"{meta} not found: run the prepare stage first (python -m pruning prepare)")
    facts = json.loads(Path(meta).read_text())
    (x_tr, y_tr), (x_te, y_te) = read_arrays(train), read_arrays(test)
    return Data(Split(torch.from_numpy(x_tr), torch.from_numpy(y_tr)), Split(torch.from_numpy(x_te), torch.from_numpy(y_te)),
                tuple(facts["input_shape"]), int(facts["num_classes"]))
