"""prepare: data source -> data/train.npz, data/test.npz, data/meta.json.

In-memory sources (digits, mnist1d, npz) are split and saved as arrays. Streamed sources (imagefolder, your
``module:callable``) are not copied: the split files hold which samples of the source are train and test, and every
later stage reads the samples from the source through DataLoaders. data/meta.json records the source's fingerprint
(its files' content, your data module's code), so DVC — which runs this stage on every ``dvc repro``
(``always_changed``) — reruns what follows only when the data or the split changed. What the outputs are a function
of is recorded beside them (:mod:`pruning.fingerprint`): while it holds, the stage's command returns at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pruning.arrays import load_split, save_arrays
from pruning.data import EVAL_BATCH, DataConfig, batches, take, tensors
from pruning.errors import DataError, params_errors
from pruning.fingerprint import FILE_HASHES, RECORD, record, source_digest
from pruning.sources import num_classes, save_indices, split_streamed, user_code
from pruning.stages.common import paths, write_json

if TYPE_CHECKING:
    from pruning.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareResult:
    n_train: int
    n_test: int
    input_shape: tuple[int, ...] | None
    num_classes: int


def run(cfg: Config, root: str | Path = ".") -> PrepareResult:
    """Load ``data.source``, split it by ``seed`` and write the splits (arrays, or indices of a streamed source)."""
    p = paths(cfg, root)
    d = cfg.data
    source_path = str(Path(root) / d.path) if d.path is not None else None
    cache = Path(p.data_meta).parent / FILE_HASHES
    with params_errors("data"):
        code = user_code(d.source)
        if d.streamed:
            result = _streamed(cfg, p, root, lambda: source_digest(d.source, source_path, code, cache))
            _record(cfg, Path(root), code)
            return result
        (x_tr, y_tr), (x_te, y_te) = load_split(d.model_copy(update={"path": source_path}), cfg.seed)
        digest = source_digest(d.source, source_path, code, cache)  # after the checks: bad data writes nothing
    classes = int(max(y_tr.max(), y_te.max())) + 1
    result = PrepareResult(len(x_tr), len(x_te), tuple(int(s) for s in x_tr.shape[1:]), classes)
    save_arrays(p.train_data, x_tr, y_tr)
    save_arrays(p.test_data, x_te, y_te)
    write_json(p.data_meta, {
        "source": d.source, "streamed": False, "fingerprint": digest,
        "input_shape": list(result.input_shape or ()), "num_classes": classes,
        "n_train": result.n_train, "n_test": result.n_test,
        "train_class_counts": np.bincount(y_tr, minlength=classes).tolist(),
    })
    _record(cfg, Path(root), code)
    return result


def _record(cfg: Config, root: Path, code: list[str]) -> None:
    """Record the recipe of what was just written (:mod:`pruning.fingerprint`), so that the stage's command returns at
    once while nothing changes. Only for the workspace's own params.yaml saying what ``cfg`` says (a run with another
    params file records nothing: its outputs are not what params.yaml describes)."""
    from pruning.config import parse_config
    from pruning.schema import safe_load_unique

    params = root / "params.yaml"
    done = Path(paths(cfg, root).data_meta).parent / RECORD
    try:
        raw = safe_load_unique(params.read_text(encoding="utf-8"))
        same = parse_config(raw, str(params))
        if (same.seed, same.data, same.paths) != (cfg.seed, cfg.data, cfg.paths):
            raise ValueError("another params file")
        where = str(root / cfg.data.path) if cfg.data.path is not None else None
        record(raw, root, source_digest(cfg.data.source, where, code, done.parent / FILE_HASHES), code)
    except Exception:  # noqa: BLE001 - without a record the next run prepares in full: nothing is lost
        done.unlink(missing_ok=True)


def _describe(x: Any) -> list[dict[str, Any]]:
    """Name (or position), per-sample shape and dtype of each input of a batch of one."""
    names = list(x) if isinstance(x, dict) else [None] * len(tensors(x))
    return [{"name": n, "shape": list(t.shape[1:]), "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t in zip(names, tensors(x), strict=True)]


def _class_count(split: Any, d: DataConfig) -> int:
    """From the dataset's ``classes`` / ``num_classes``; else one streamed pass over the targets: class ids give
    max + 1, float targets their width (the model's output size)."""
    known = num_classes(split.train)
    if known is not None:
        return known
    log.info("counting classes over the %d + %d samples (give the dataset a `classes` attribute to skip this)",
             len(split.train_idx), len(split.test_idx))
    top, width = -1, None
    for ds, idx in ((split.train, split.train_idx), (split.test, split.test_idx)):
        sub = torch.utils.data.Subset(ds, idx.tolist())
        for batch in batches(sub, EVAL_BATCH):
            y = batch.y
            if y.is_floating_point():
                width = int(y.shape[1]) if y.dim() > 1 else 1
            else:
                top = max(top, int(y.max()))
    return width if width is not None else top + 1


def _streamed(cfg: Config, p: Any, root: str | Path, digest_of: Callable[[], str]) -> PrepareResult:
    d = cfg.data
    split = split_streamed(d.model_copy(update={"path": str(Path(root) / d.path) if d.path else None}), cfg.seed)
    example = take(split.train, [int(split.train_idx[0])]).x
    inputs = _describe(example)
    shape = tuple(inputs[0]["shape"]) if isinstance(example, torch.Tensor) else None
    if isinstance(example, torch.Tensor) and not example.is_floating_point():
        shape = None  # token ids and the like: no per-sample float shape to build a zoo model from
    classes = _class_count(split, d)
    if classes < 1:
        raise DataError(f"data.source {d.source!r}: no targets to learn from")
    digest = digest_of()
    save_indices(p.train_data, split.train_idx)
    save_indices(p.test_data, split.test_idx)
    facts = {"source": d.source, "streamed": True, "fingerprint": digest, "input_shape": list(shape) if shape else None,
             "inputs": inputs, "num_classes": classes, "n_train": len(split.train_idx), "n_test": len(split.test_idx),
             "n_calibration": len(split.calibration) if split.calibration is not None else None}
    classes_of = getattr(split.train, "classes", None)
    if classes_of is not None:
        facts["classes"] = [str(c) for c in classes_of]
    write_json(p.data_meta, facts)
    return PrepareResult(len(split.train_idx), len(split.test_idx), shape, classes)
