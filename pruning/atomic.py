"""Writing a file so that a kill at any moment leaves either the old file or the new one, never half of one.

Why a helper: every output of the pipeline (model files, data splits, JSON reports, the fingerprint cache) is written
through it — a temporary file in the same directory, flushed and fsynced, then ``os.replace``d over the target (atomic
on POSIX and Windows within one filesystem). A failure on the way removes the temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file handle whose content replaces ``path`` when the block ends without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """``path``'s content becomes ``data``, atomically."""
    with replacing(path) as f:
        f.write(data)
