"""Streamed data sources: a user's ``module:callable`` returning ``torch.utils.data.Dataset``s, and the built-in
``imagefolder`` (class-per-folder images read with Pillow; no torchvision). Their samples are read one by one through
DataLoaders (:func:`pruning.data.batches`), never stacked into one tensor.

What DVC needs to notice changed data: :func:`pruning.fingerprint.source_digest` hashes the content of every file under
``data.path`` and the source file of the user's data module (:func:`user_code`). The prepare stage writes it into
data/meta.json, which every later stage depends on.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pruning.atomic import replacing
from pruning.errors import DataError, PruningError

# cfg arguments below are pruning.data.DataConfig, not imported: pruning.data imports this module to load streamed
# splits
DataConfig = Any

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageFolder(Dataset):
    """Images in class folders (``root/<class>/<image>``), as float tensors (C, H, W): values in [0, 1], resized to
    ``image_size`` when given, then normalised by ``mean`` / ``std`` when given. Targets are class indices in the
    sorted order of the folder names (``classes``)."""

    def __init__(self, files: Sequence[tuple[Path, int]], classes: Sequence[str], image_size: Sequence[int] | None,
                 channels: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        self.files, self.classes = list(files), list(classes)
        self.image_size, self.channels = (tuple(image_size) if image_size else None), channels
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        path, label = self.files[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB" if self.channels == 3 else "L")
                if self.image_size is not None and img.size != (self.image_size[1], self.image_size[0]):
                    img = img.resize((self.image_size[1], self.image_size[0]), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"image {path} cannot be read: {exc}") from None
        x = torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], -1)).permute(2, 0, 1).contiguous()
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x, label


def _class_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>.png, ...)", field="path")
    files = []
    for label, name in enumerate(classes):
        found = sorted(f for f in (root / name).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{root / name}: no images ({', '.join(IMAGE_SUFFIXES)})", field="path")
        files += [(f, label) for f in found]
    return classes, files


def image_folder(root: str | Path, image_size: Sequence[int] | None, channels: int, mean: Sequence[float] | None,
                 std: Sequence[float] | None) -> tuple[ImageFolder, ImageFolder | None]:
    """``root/train/<class>/...`` and ``root/test/<class>/...`` as (train, test), or ``root/<class>/...`` as (all,
    None) to be split by the caller. DataError naming the folder when there are no classes or no images."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found", field="path")

    def build(d: Path) -> ImageFolder:
        classes, files = _class_files(d)
        return ImageFolder(files, classes, image_size, channels, mean, std)

    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = build(root / "train"), build(root / "test")
        if train.classes != test.classes:
            raise DataError(f"{root}: train classes {train.classes} differ from test classes {test.classes}",
                            field="path")
        return train, test
    return build(root), None


def _is_dataset(obj: Any) -> bool:
    return hasattr(obj, "__getitem__") and hasattr(obj, "__len__")


def user_datasets(spec: str, kwargs: dict[str, Any], path: str | None) -> tuple[Dataset, Dataset | None,
                                                                                  Dataset | None]:
    """Call the user's ``module:callable`` (with ``kwargs``, and ``path=`` when set): (train, test or None,
    calibration or None). It may return one dataset (split here), ``(train, test)``, ``(train, test, calibration)``
    or a dict with those keys."""
    from pruning.zoo import resolve_callable, user_code, what_failed

    try:
        fn = resolve_callable(spec)
    except PruningError as exc:
        raise DataError(str(exc), field="source") from None
    call = {**kwargs, **({"path": path} if path is not None else {})}
    try:
        with user_code() as interrupted:
            out = fn(**call)
    except PruningError:
        raise
    except BaseException as exc:  # the user's code: any failure (sys.exit too) is theirs to fix, in one line
        if interrupted(exc):
            raise
        raise DataError(f"{spec}({', '.join(f'{k}={v!r}' for k, v in call.items())}) failed: "
                        f"{what_failed(exc)}", field="source") from None
    if isinstance(out, dict):
        unknown = set(out) - {"train", "test", "calibration"}
        if "train" not in out or unknown:
            raise DataError(f"{spec} returned a dict with keys {sorted(out)}: expected train, test (and optionally "
                            "calibration)", field="source")
        parts = (out["train"], out.get("test"), out.get("calibration"))
    elif _is_dataset(out) and not isinstance(out, list | tuple):
        parts = (out, None, None)
    elif isinstance(out, list | tuple) and len(out) in (2, 3):
        parts = (out[0], out[1], out[2] if len(out) == 3 else None)
    else:
        raise DataError(f"{spec} returned {type(out).__name__}: expected a Dataset, (train, test), (train, test, "
                        "calibration) or a dict of them", field="source")
    for name, part in zip(("train", "test", "calibration"), parts, strict=True):
        if part is not None and not _is_dataset(part):
            raise DataError(f"{spec}: its {name} part is a {type(part).__name__}, not a map-style "
                            "torch.utils.data.Dataset (with __len__ and __getitem__)", field="source")
        if part is not None and len(part) == 0:
            raise DataError(f"{spec}: its {name} dataset is empty", field="source")
    return parts  # type: ignore[return-value]


def num_classes(dataset: Dataset) -> int | None:
    """What a dataset says of its class count (``classes`` or ``num_classes``, torchvision's conventions), or None."""
    inner = getattr(dataset, "dataset", dataset)  # a Subset
    for obj in (dataset, inner):
        if hasattr(obj, "classes"):
            return len(obj.classes)
        if isinstance(getattr(obj, "num_classes", None), int):
            return int(obj.num_classes)
    return None


def user_code(source: str) -> list[str]:
    """The source file of the module that defines a ``module:callable`` source (its code is part of the data's
    fingerprint: a changed Dataset class changes the samples); none for a built-in source."""
    if ":" not in source:
        return []
    from pruning.zoo import resolve_callable

    module = inspect.getmodule(resolve_callable(source))
    file = inspect.getsourcefile(module) if module is not None else None
    return [str(Path(file).resolve())] if file and os.path.isfile(file) else []


def streamed_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """(train, test or None, calibration or None) of a streamed source: imagefolder or the user's callable."""
    if cfg.source == "imagefolder":
        if cfg.path is None:
            raise DataError('source imagefolder needs the folder in "path"', field="path")
        train, test = image_folder(cfg.path, cfg.image_size, cfg.channels, cfg.mean, cfg.std)
        return train, test, None
    return user_datasets(cfg.source, cfg.kwargs, cfg.path)


@dataclass(frozen=True)
class StreamedSplit:
    """A streamed source as the prepare stage splits it: which samples of which dataset are train and test."""

    train: Dataset
    train_idx: np.ndarray
    test: Dataset
    test_idx: np.ndarray
    calibration: Dataset | None


def split_streamed(cfg: DataConfig, seed: int) -> StreamedSplit:
    """The source's own train/test datasets, or one dataset split by ``test_fraction`` (stratified when its labels
    are known without reading the samples, as for imagefolder; seeded)."""
    train, test, calibration = streamed_datasets(cfg)
    if test is not None:
        return StreamedSplit(train, np.arange(len(train)), test, np.arange(len(test)), calibration)  # type: ignore[arg-type]
    n = len(train)  # type: ignore[arg-type]
    files = getattr(train, "files", None)
    labels = np.array([label for _, label in files]) if files is not None else None
    from sklearn.model_selection import train_test_split

    try:
        tr, te = train_test_split(np.arange(n), test_size=cfg.test_fraction, random_state=seed, stratify=labels)
    except ValueError as exc:  # a class with a single sample cannot be stratified; too few samples
        raise DataError(f"cannot split the {n} samples with a test fraction of {cfg.test_fraction}: {exc}",
                        field="test_fraction") from None
    return StreamedSplit(train, np.sort(tr), train, np.sort(te), calibration)


def save_indices(path: str | Path, idx: np.ndarray) -> None:
    """Write which samples of a streamed dataset form a split (the DVC out that changes when the split does),
    atomically."""
    with replacing(path) as f:
        np.savez(f, idx=np.asarray(idx, dtype=np.int64))


def read_indices(path: str | Path) -> np.ndarray:
    if not Path(path).is_file():
        raise DataError(f"{path} not found: run the prepare stage first (python -m pruning prepare)")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "idx" not in f.files:
                raise DataError(f"{path} holds arrays, not the indices of a streamed source: rerun the prepare stage")
            idx = f["idx"]
        if not (isinstance(idx, np.ndarray) and idx.ndim == 1 and np.issubdtype(idx.dtype, np.integer)):
            raise DataError(f"{path} does not hold the sample indices the prepare stage wrote: rerun the prepare stage")
        return idx
    except DataError:
        raise
    except Exception as exc:  # a truncated zip, a .npy, pickled members: all "rerun prepare"
        raise DataError(f"{path} is not a split the prepare stage wrote ({type(exc).__name__}): rerun the prepare "
                        "stage") from None
