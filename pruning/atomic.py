"""Writing a file so that a kill at any moment leaves either the old file or the new one, never half of one.

Why a helper: every output of the pipeline (model files, data splits, JSON reports, the fingerprint cache) is written
through it — a temporary file in the same directory, flushed and fsynced, then ``os.replace``d over the target (atomic
on POSIX and Windows within one filesystem). A failure on the way removes the temporary file; a kill leaves it, named
after the process that wrote it, and the next write of the same file removes it once that process is gone. A directory
that cannot be written is a one-line :class:`~pruning.errors.PruningError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pruning import faults
from pruning.errors import PruningError


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_leftovers(path: Path) -> None:
    """Temporary files of ``path`` left by killed writers (``.<name>.<pid>.<random>.tmp`` whose pid is gone)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file handle whose content replaces ``path`` when the block ends without an exception."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        raise PruningError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise PruningError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """``path``'s content becomes ``data``, atomically."""
    with replacing(path) as f:
        f.write(data)


def publish(src: str | Path, dst: str | Path) -> None:
    """Copy the finished file ``src`` (e.g. written by a library into a temporary directory, which may lie on another
    filesystem than ``dst``, where a rename would fail) over ``dst``, atomically."""
    import shutil

    with open(src, "rb") as source, replacing(dst) as f:
        shutil.copyfileobj(source, f, 1 << 20)
