"""Where a user sees what long work is doing: the log lines of the stage verbs and the benchmarks, and a progress
display for a loop of many steps.

On a terminal both are Rich's (a coloured log, a live bar). Piped — to a file, CI, a scheduler's log, DVC's or the
flow's capture — Rich pads every log line to the console's width and draws a bar only when it ends, so there each
record is one plain line with the time, and each step of a loop one log line with the elapsed time and an estimate of
what is left: a long benchmark shows progress within seconds, as the flow does.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

NOISY = ("torch", "onnx", "onnxruntime")  # libraries that log chatter at INFO


def log_handler() -> logging.Handler:
    """Rich's handler on a terminal (stderr); piped, ``12:03:04 INFO     message``, one line per record."""
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        from pruning.acceptance.report import make_console

        return RichHandler(console=make_console(stderr=True), show_path=False, show_time=False)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-8s %(message)s", datefmt="%H:%M:%S"))
    return handler


def configure(*loggers: str, verbose: bool = False) -> None:
    """Log to stderr through :func:`log_handler`: ``loggers`` (``pruning``, a benchmark's ``bench``) at INFO (DEBUG
    with ``verbose``), the root logger at WARNING (onnxruntime's quantizer logs its INFO chatter there)."""
    logging.basicConfig(level=logging.WARNING, handlers=[log_handler()], force=True)
    for name in loggers:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def steps(total: int, label: str, log: logging.Logger) -> Iterator[Callable[[str], None]]:
    """A loop of ``total`` steps: yields ``advance(what)``, called once a step is done. A Rich bar on a terminal;
    piped, a line when the loop starts and one per step (``label: 3/40 seed 0 l2 (2 min 10 s, ~26 min left)``)."""
    if sys.stderr.isatty():
        from rich.progress import Progress

        from pruning.acceptance.report import make_console

        with Progress(console=make_console(stderr=True)) as progress:
            task = progress.add_task(label, total=total)
            yield lambda what: progress.update(task, advance=1, description=f"{label}: {what}")
        return
    start, done = time.monotonic(), 0
    log.info("%s: 0/%d, started", label, total)

    def advance(what: str) -> None:
        nonlocal done
        done += 1
        elapsed = time.monotonic() - start
        log.info("%s: %d/%d %s (%s, ~%s left)", label, done, total, what, duration(elapsed),
                 duration(elapsed / done * (total - done)))

    yield advance


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
