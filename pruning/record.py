"""Recording a stage in DVC: the one path, besides ``dvc repro`` itself, that writes a stage's entry in dvc.lock (and
its outputs in DVC's cache).

The pipeline flow asks DVC whether a stage is stale, runs it and records it; a stage verb typed by hand in a DVC
workspace (``python -m pruning evaluate``) runs and records itself the same way, so ``dvc status`` stays clean and the
next ``dvc repro`` redoes nothing. Both hold DVC's repository lock from the check to the record, as ``dvc repro`` does:
no other DVC command runs or records the stage in between. ``Repo.status`` is the check ``dvc repro`` makes and
``Repo.commit`` writes the entry ``dvc repro`` writes, so the two can never disagree.

Why this module imports dvc (lazily) while the rest of the package does not: recording is DVC's API, and the CLI,
which must record a verb typed by hand, cannot import the flows.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pruning.errors import PruningError

# DVC sets it for the command of a stage it runs (dvc repro): DVC records that stage itself
UNDER_DVC = "DVC_STAGE"


def is_dvc_workspace(root: str | Path) -> bool:
    """A directory with dvc.yaml inside a DVC repository (params.yaml next to dvc.yaml is what DVC reads)."""
    root = Path(root)
    return (root / "dvc.yaml").is_file() and (root / ".dvc").is_dir()


class Locked(PruningError):
    """Another DVC command holds the repository's lock."""


class Recorder:
    """DVC's view of one workspace while its repository lock is held (:func:`recording`)."""

    def __init__(self, repo: Any) -> None:
        self._repo = repo

    def stale(self, stage: str) -> dict[str, Any]:
        """DVC's status entry for ``stage`` (``{}`` when it is up to date): what ``dvc repro`` would rerun, and why."""
        return self._repo.status(targets=[stage])

    def commit(self, stage: str) -> None:
        """Record ``stage``: hash its params, dependencies and outputs into dvc.lock and its outputs into the cache."""
        self._repo.commit(stage, force=True)


@contextlib.contextmanager
def recording(root: str | Path) -> Iterator[Recorder]:
    """Hold DVC's lock of the repository at ``root`` (a DVC workspace) and yield its :class:`Recorder`.

    DVC's Python API resolves outputs against the working directory (an "is_in_repo" check asserts otherwise), so its
    calls run from ``root``; a fresh ``Repo`` each time, since every commit changes dvc.lock. Another DVC command
    holding the lock (a ``dvc repro``, another pipeline run) is a one-line :class:`Locked`."""
    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    # Importing dvc sets its loggers to INFO: "Updating lock file 'dvc.lock'" after each commit is noise here
    logging.getLogger("dvc").setLevel(logging.WARNING)
    root = Path(root).absolute()
    try:
        with contextlib.chdir(root), Repo(".") as repo, lock_repo(repo):
            yield Recorder(repo)
    except LockError:
        raise Locked(f"another DVC command (dvc repro, another pipeline run) holds the lock of {root}; wait "
                           "for it to finish and rerun") from None


def describe(changes: dict[str, Any]) -> str:
    """DVC's status entry for one stage as a short phrase ('changed deps: pruning/training.py', 'new')."""
    parts: list[str] = []
    for entry in next(iter(changes.values()), []):
        if isinstance(entry, str):
            parts.append(entry)
        else:
            for kind, items in entry.items():
                parts.append(f"{kind}: {', '.join(sorted(items)) if isinstance(items, dict) else items}")
    return "; ".join(parts) or "stale"
