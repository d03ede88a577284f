"""In-memory data sources -> numpy arrays ``x: (N, C, ...) float32``, ``y: (N,) int64`` and their deterministic split;
the split files the prepare stage writes and every later stage reads.

Nothing here downloads: digits ship inside scikit-learn, mnist1d is generated offline with its ``make_dataset``.
Streamed sources (imagefolder, a user's Datasets) live in :mod:`pruning.sources`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pruning.atomic import replacing
from pruning.errors import DataError

# cfg arguments below are pruning.data.DataConfig, not imported: pruning.data imports this module to read the splits
DataConfig = Any

Arrays = tuple[np.ndarray, np.ndarray]


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
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{where}: x must hold numbers, got dtype {x.dtype}")
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
        if not all(isinstance(a, np.ndarray) for a in arrays.values()):  # a member that is not .npy: bytes
            raise ValueError("members that are not .npy arrays")
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a .npy, an empty file (EOFError), pickled members
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"data file {path} is not a readable .npz without pickles ({type(exc).__name__}: {first})",
                        field="path") from None
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
    """Write one split as an uncompressed .npz (x, y), atomically."""
    with replacing(path) as f:  # a file handle keeps numpy from appending .npz to the name
        np.savez(f, x=x, y=y)


def read_arrays(path: str | Path) -> Arrays:
    """Read a split written by :func:`save_arrays`."""
    if not Path(path).is_file():
        raise DataError(f"{path} not found: run the prepare stage first (python -m pruning prepare)")
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
    except Exception as exc:  # a truncated zip, a .npy, missing arrays, pickled members: all "rerun prepare"
        raise DataError(f"{path} is not a split the prepare stage wrote ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}): rerun the prepare stage") from None
    arrays = all(isinstance(a, np.ndarray) for a in (x, y))  # a zip member that is not .npy comes back as bytes
    if not (arrays and all(np.issubdtype(a.dtype, np.number) or a.dtype == bool for a in (x, y))
            and x.ndim >= 1 and y.ndim >= 1 and len(x) == len(y)):
        what = f"x {x.dtype} {x.shape}, y {y.dtype} {y.shape}" if arrays else "members that are not arrays"
        raise DataError(f"{path} is not a split the prepare stage wrote ({what}): rerun the prepare stage")
    return x, y
