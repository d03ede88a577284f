"""prepare's recipe (pruning/fingerprint.py): DVC runs prepare on every repro; the command DVC runs returns at once,
without importing torch, exactly while nothing its outputs depend on changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import yaml

from pruning.config import load_config
from pruning.fingerprint import RECORD, unchanged
from pruning.stages.prepare import run
from tests.conftest import write_params

# what `python -m pruning prepare` (DVC's command) prints and whether it imported torch, in a workspace
PROBE = ("import runpy, sys\nsys.argv = ['pruning', 'prepare']\ntry:\n    runpy.run_module('pruning', run_name='__main__')\n"
         "except SystemExit as e:\n    assert not e.code, e.code\nprint('torch imported:', 'torch' in sys.modules)")


def _prepared(tmp_path, over=None):
    params = write_params(tmp_path, over)
    run(load_config(params), tmp_path)
    return params


def test_nothing_changed_is_unchanged_and_each_input_or_output_that_changes_is_not(tmp_path):
    x = np.random.default_rng(0).random((40, 4), dtype=np.float32)
    np.savez(tmp_path / "mine.npz", x=x, y=np.arange(40) % 2)
    params = _prepared(tmp_path, {"data": {"source": "npz", "path": "mine.npz"}})
    assert unchanged(params)
    # the data file: new content
    np.savez(tmp_path / "mine.npz", x=x + 1, y=np.arange(40) % 2)
    assert not unchanged(params)
    run(load_config(params), tmp_path)
    assert unchanged(params)
    # a params key prepare reads
    raw = yaml.safe_load(params.read_text())
    raw["data"]["test_fraction"] = 0.3
    params.write_text(yaml.safe_dump(raw))
    assert not unchanged(params)
    run(load_config(params), tmp_path)
    assert unchanged(params)
    # a key it does not read
    raw["prune"]["ratio"] = 0.6
    params.write_text(yaml.safe_dump(raw))
    assert unchanged(params)
    # an output edited or removed behind its back
    meta = tmp_path / "data" / "meta.json"
    meta.write_text(meta.read_text().replace('"n_test"', '"n_test" '))
    assert not unchanged(params)
    run(load_config(params), tmp_path)
    (tmp_path / "data" / "test.npz").unlink()
    assert not unchanged(params)


def test_a_run_with_another_params_file_records_nothing(tmp_path):
    params = _prepared(tmp_path)
    assert unchanged(params)
    other = tmp_path / "other.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["seed"] = 7
    other.write_text(yaml.safe_dump(raw))
    run(load_config(other), tmp_path)  # outputs that params.yaml does not describe
    assert not (tmp_path / "data" / RECORD).exists() and not unchanged(params)


def test_dvc_s_command_returns_without_importing_torch_only_while_unchanged(tmp_path):
    _prepared(tmp_path)
    probe = [sys.executable, "-c", PROBE]
    under_dvc = {**os.environ, "DVC_STAGE": "prepare"}  # DVC sets it for its stages' commands
    fast = subprocess.run(probe, cwd=tmp_path, capture_output=True, text=True, check=True, env=under_dvc).stdout
    assert "prepare unchanged" in fast and "torch imported: False" in fast
    record = json.loads((tmp_path / "data" / RECORD).read_text())
    record["recipe"] = "0" * 64  # as if the data, the params or the code had changed
    (tmp_path / "data" / RECORD).write_text(json.dumps(record))
    full = subprocess.run(probe, cwd=tmp_path, capture_output=True, text=True, check=True, env=under_dvc).stdout
    assert "prepare done: n_train=1437" in full and "torch imported: True" in full
    assert unchanged(tmp_path / "params.yaml")  # that full run recorded its recipe again
    by_hand = subprocess.run(probe, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "prepare done" in by_hand  # typed by hand, a verb runs its stage all the same
