"""Deterministic crash points, for the crash tests (tests/e2e/test_crash.py) and nothing else.

Why it exists: "a kill at any moment leaves nothing half-written" can only be tested if the kill lands at the worst
moment every time, not when a timer happens to fire. Setting ``PRUNING_CRASH_AT=<point>`` makes the process SIGKILL its
whole process group when it reaches that point; unset (always, outside the tests) a point costs one dict lookup. Points:
``write:<file name>`` (an output fully written to its temporary file, not yet renamed over the target),
``mlflow:store`` (a new MLflow store created, not yet moved into place), ``mlflow:logging`` (the parent run open, some
of the stages logged), ``promote:registered`` (a version registered, its tags and alias not yet set),
``ddp:rank<N>`` (training rank N, its model wrapped, before its first batch: that rank alone is killed).
"""

from __future__ import annotations

import os
import signal

ENV = "PRUNING_CRASH_AT"


def point(name: str, group: bool = True) -> None:
    """SIGKILL this process group (``group``; else this process alone) here if ``PRUNING_CRASH_AT`` names this
    point."""
    if os.environ.get(ENV) == name:
        if group:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
