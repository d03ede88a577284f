"""What validating params.yaml needs beyond its schema (:mod:`pruning.config`): files that must exist, callables that
must import (and be what they claim), names that must agree across sections, and the keys dvc.yaml tracks.
``cfg`` is a :class:`pruning.config.Config` (typed Any: config imports this module).
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pruning.errors import ConfigError, PruningError
from pruning.hf import HF
from pruning.schema import link_problem, workspace_path_problem
from pruning.zoo import check_builder, resolve_callable


def check_tracked(raw: dict[str, Any], path: Path) -> None:
    """Every params key the dvc.yaml next to ``path`` tracks must be in the file: the schema has defaults for them,
    DVC does not, and would fail in the middle of a run."""
    dvc_yaml = path.parent / "dvc.yaml"
    if path.name != "params.yaml" or not dvc_yaml.is_file():
        return
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages") or {}
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError):
        return  # DVC reports a broken dvc.yaml itself
    for name, stage in stages.items():
        for key in (stage or {}).get("params") or []:
            if not isinstance(key, str):
                continue  # {other_file: [keys]}: not this file
            node: Any = raw
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise ConfigError(f'Missing key "{key}" in {path}: dvc.yaml\'s {name} stage tracks it (write it '
                                      "out, even with the default value)")
                node = node[part]



def check_references(cfg: Any, file: str, root: Path) -> None:
    """Check what the schema cannot: files that must exist (relative to ``root``, the directory of params.yaml: the
    workspace) and callables that must import."""
    d = cfg.data
    if d.path is not None and (problem := workspace_path_problem(d.path)):
        raise ConfigError(f'Invalid "data.path" in {file}: {d.path!r} {problem}')
    _check_confined(cfg, file, root)
    if d.source == "npz":
        if not d.path:
            raise ConfigError(f'Missing "data.path" in {file}: data.source "npz" needs the path of an .npz file')
        if problem := _not_a(stat.S_ISREG, root, d.path, "data file"):
            raise ConfigError(f'Invalid "data.path" in {file}: {problem}')
    elif d.source == "imagefolder":
        if not d.path:
            raise ConfigError(f'Missing "data.path" in {file}: data.source "imagefolder" needs the folder of '
                              "class folders")
        if problem := _not_a(stat.S_ISDIR, root, d.path, "image folder"):
            raise ConfigError(f'Invalid "data.path" in {file}: {problem}')
    elif ":" in d.source:
        if d.path is not None and (problem := _not_a(lambda mode: stat.S_ISREG(mode) or stat.S_ISDIR(mode), root,
                                                     d.path, "data path")):
            raise ConfigError(f'Invalid "data.path" in {file}: {problem}')
        try:
            resolve_callable(d.source)
        except PruningError as exc:
            raise ConfigError(f'Invalid "data.source" in {file}: {exc}') from None
    elif d.path is not None:
        raise ConfigError(f'Invalid "data.path" in {file}: data.source {d.source!r} reads no file (set it to null)')
    if d.source not in ("imagefolder",) and (d.image_size or d.mean or d.std):
        raise ConfigError(f'Invalid "data" in {file}: image_size, mean and std apply to data.source imagefolder only')
    if ":" not in d.source and d.kwargs:
        raise ConfigError(f'Invalid "data.kwargs" in {file}: only a module:callable source takes arguments')
    if ":" in cfg.model.arch:
        try:
            check_builder(cfg.model.arch, resolve_callable(cfg.model.arch))
        except PruningError as exc:
            raise ConfigError(f'Invalid "model.{exc.field}" in {file}: {exc}') from None
    _check_weights(cfg, file, root)
    _check_metric_names(cfg, file)
    for key in ("loss", "metric"):
        spec = getattr(cfg.task, key)
        if ":" in spec:
            try:
                resolve_callable(spec)
            except PruningError as exc:
                raise ConfigError(f'Invalid "task.{key}" in {file}: {exc}') from None


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _not_a(wanted: Callable[[int], bool], root: Path, value: str, noun: str) -> str | None:
    """Why ``value`` (relative to ``root``) is not what a key asks for (``wanted``: a ``stat.S_IS*`` test), or None:
    "not found", or what is there instead (a named pipe would block the stage that opens it)."""
    try:
        mode = (root / value).stat().st_mode
    except OSError:
        return f"{noun} {value} not found"
    if wanted(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "something else")
    want = " or ".join(name for fmt, name in ((stat.S_IFREG, "a regular file"), (stat.S_IFDIR, "a directory"))
                       if wanted(fmt))
    return f"{noun} {value} is {kind}, not {want}"


def _check_confined(cfg: Any, file: str, root: Path) -> None:
    """Every path params.yaml names lies inside the workspace once its symbolic links are followed: a ``data/`` that
    links elsewhere would take the stages' outputs there, a data file that links out would be read from there."""
    named = {f"paths.{key}": value for key, value in cfg.paths.model_dump().items()}
    named |= {"data.path": cfg.data.path, "model.weights": cfg.model.weights}
    for key, value in named.items():
        if value is not None and not workspace_path_problem(value) and (problem := link_problem(value, root)):
            raise ConfigError(f'Invalid "{key}" in {file}: {value!r} {problem}')


def _check_metric_names(cfg: Any, file: str) -> None:
    """Gates and the registry may name accuracy only while the task's metric is accuracy."""
    if cfg.task.metric == "accuracy":
        return
    named = [(f"gates.{name}.metric", g.metric) for name, g in cfg.gates.items()]
    named.append(("registry.primary_metric", cfg.registry.primary_metric))
    for key, metric in named:
        if metric.rpartition(".")[2] in ("accuracy", "accuracy_drop", "quantized_accuracy_drop"):
            raise ConfigError(f'Invalid "{key}" in {file}: {metric!r}, but task.metric is {cfg.task.metric!r}: use '
                              "metric_drop, quantized_metric_drop or <variant>.metric (the task's metric)")


def _check_weights(cfg: Any, file: str, root: Path) -> None:
    """model.weights: a file inside paths.weights_dir (a directory DVC cannot be told about is a dependency DVC
    cannot see), and train.epochs 0 only with weights to start from."""
    weights = cfg.model.weights
    if weights is None:
        if cfg.model.arch == HF:
            raise ConfigError(f'Invalid "model.weights" in {file}: model.arch hf needs the save_pretrained directory '
                              f"here (inside paths.weights_dir)")
        if cfg.train.epochs == 0:
            raise ConfigError(f'Invalid "train.epochs" in {file}: 0 (no training) needs the trained weights in '
                              '"model.weights"')
        return
    from pruning.weights import SUFFIXES

    where = Path(cfg.paths.weights_dir)
    if where.is_absolute() or ".." in where.parts:
        raise ConfigError(f'Invalid "paths.weights_dir" in {file}: {str(where)!r} must be a directory inside the '
                          "workspace (a relative path without ..)")
    path = Path(weights)
    if path.is_absolute() or ".." in path.parts or path.parts[:len(where.parts)] != where.parts:
        raise ConfigError(f'Invalid "model.weights" in {file}: {weights!r} is not inside paths.weights_dir '
                          f"({where}/): put the file there (copy, link or dvc add it) so DVC reruns train when it "
                          "changes")
    if cfg.model.arch == HF:
        from pruning.hf import directory_problem

        if problem := _not_a(stat.S_ISDIR, root, weights, "save_pretrained directory") or directory_problem(root / path):
            raise ConfigError(f'Invalid "model.weights" in {file}: {problem}')
        return
    if path.suffix not in SUFFIXES:
        raise ConfigError(f'Invalid "model.weights" in {file}: {weights!r} is not a weights file '
                          f"({' | '.join(SUFFIXES)}; model.arch hf reads a save_pretrained directory)")
    if problem := _not_a(stat.S_ISREG, root, weights, "weights file"):
        raise ConfigError(f'Invalid "model.weights" in {file}: {problem}')
