"""A long benchmark piped to a file (CI, a scheduler's log, `> out.txt`) shows its progress as it goes: the real
commands, the shipped settings (a smaller dataset), read line by line and stopped once they have shown it (they
printed nothing for 15+ minutes before: Rich draws its bar only on a terminal, and logging was not configured)."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import REPO

LINE = re.compile(r"\d\d:\d\d:\d\d (INFO|WARNING) +\S.*\S")  # the time, the level, the message: no padding


@pytest.mark.parametrize("command, expected", [
    (["bench.criteria", "--quick"], ["bench criteria: 0/", "bench criteria: seed 0: training the base model",
                                     "base model seed 0 epoch 1/"]),
    (["bench.latency", "--arch", "resnet", "--input-shape", "3,32,32", "--batch", "1"],
     ["bench latency: 0/1, started", "bench latency: dense built and exported"]),
])
def test_a_piped_benchmark_reports_progress_within_a_minute(tmp_path, command, expected):
    (tmp_path / "bench").mkdir()
    bench = yaml.safe_load((REPO / "bench" / "params.yaml").read_text())
    bench["samples"] = 400  # the shipped settings but a smaller dataset: the first lines sooner, same code path
    (tmp_path / "bench" / "params.yaml").write_text(yaml.safe_dump(bench))
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")  # its reports would go to tmp_path/reports/bench
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", *command], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    start = time.monotonic()
    try:
        for line in process.stderr:
            seen.append(line.rstrip("\n"))
            if all(any(e in s for s in seen) for e in expected) or time.monotonic() - start > 60:
                break
    finally:
        process.kill()
        process.wait()
    assert time.monotonic() - start < 60, seen
    assert all(any(e in s for s in seen) for e in expected), seen
    assert all(LINE.fullmatch(s) for s in seen), seen
