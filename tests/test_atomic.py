"""Outputs are replaced whole or not at all: a failure (a kill is the same to the target file) halfway through a
write leaves the previous file and no temporary one."""

import os

import numpy as np
import pytest
import torch

from pruning import checkpoint
from pruning.arrays import read_arrays, save_arrays
from pruning.atomic import replacing, write_bytes
from pruning.errors import PruningError


def test_a_failing_write_leaves_the_previous_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    with replacing(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_data_splits_and_model_files_are_written_through_it(tmp_path, monkeypatch):
    save_arrays(tmp_path / "train.npz", np.zeros((2, 3), np.float32), np.zeros(2, np.int64))

    def half(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", half)
    with pytest.raises(PruningError, match=r"cannot write .*train\.npz: disk full"):
        save_arrays(tmp_path / "train.npz", np.ones((5, 3), np.float32), np.ones(5, np.int64))
    monkeypatch.undo()
    assert read_arrays(tmp_path / "train.npz")[0].shape == (2, 3)  # the previous split, whole

    model = torch.nn.Linear(2, 2)
    checkpoint.save_model(tmp_path / "m.pt", model, arch="torch.nn:Linear", kwargs={"in_features": 2,
                          "out_features": 2}, input_shape=(2,), num_classes=2)
    monkeypatch.setattr(torch, "save", lambda obj, f: (f.write(b"trunc"), (_ for _ in ()).throw(OSError("kill"))))
    with pytest.raises(PruningError, match=r"m\.pt"):
        checkpoint.save_model(tmp_path / "m.pt", model, arch="torch.nn:Linear", kwargs={}, input_shape=(2,),
                              num_classes=2)
    monkeypatch.undo()
    assert checkpoint.load_record(tmp_path / "m.pt")["kwargs"] == {"in_features": 2, "out_features": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "train.npz"]


def test_a_killed_writers_temporary_file_goes_with_the_next_write_and_a_live_ones_stays(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.bin.{int(dead.stdout)}.abc.tmp"
    live = tmp_path / f".out.bin.{os.getpid()}.def.tmp"  # this process: a write in progress
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    with replacing(tmp_path / "out.bin") as f:
        f.write(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out.bin"]


def test_a_directory_that_cannot_be_written_is_one_error_naming_the_file(tmp_path):
    # (root, who runs CI here, writes into read-only directories: a file where the directory should be fails for all)
    (tmp_path / "reports").write_text("a file, not a directory")
    with pytest.raises(PruningError, match=r"cannot write .*reports/out\.bin: .*"):
        write_bytes(tmp_path / "reports" / "out.bin", b"x")
