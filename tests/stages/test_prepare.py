import json

import numpy as np
import pytest

from pruning.config import load_config
from pruning.errors import ConfigError
from pruning.stages.prepare import run
from tests.conftest import write_params


def test_prepare_writes_both_splits_and_their_facts_under_the_workspace_root(tmp_path):
    cfg = load_config(write_params(tmp_path))
    result = run(cfg, tmp_path)  # the working directory is not the workspace: nothing lands there
    assert (result.n_train, result.n_test, result.input_shape, result.num_classes) == (1437, 360, (1, 8, 8), 10)
    meta = json.loads((tmp_path / cfg.paths.data_meta).read_text())
    assert meta["n_test"] == 360 and sum(meta["train_class_counts"]) == 1437
    with np.load(tmp_path / cfg.paths.test_data) as f:
        assert f["x"].shape == (360, 1, 8, 8)


def test_prepare_names_the_params_key_when_the_split_cannot_be_made(tmp_path):
    x, y = np.random.default_rng(0).random((10, 4), dtype=np.float32), np.arange(10)  # ten classes of one sample
    np.savez(tmp_path / "tiny.npz", x=x, y=y)
    cfg = load_config(write_params(tmp_path, {"data": {"source": "npz", "path": "tiny.npz"}}))
    with pytest.raises(ConfigError, match='Invalid "data.test_fraction": cannot split the data with a test fraction'):
        run(cfg, tmp_path)
    assert not (tmp_path / "data").exists()
