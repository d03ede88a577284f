import json
from pathlib import Path

import pytest
from torch import nn

from pruning.checkpoint import load_model
from pruning.config import load_config
from pruning.errors import ModelError
from pruning.stages.train import run
from tests.conftest import write_params


def mlp(hidden: int = 32) -> nn.Module:
    """A user model given as module:callable (tests.stages.test_train:mlp)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def test_train_builds_a_user_model_from_module_callable_and_records_it(trained_copy):
    cfg = load_config(write_params(trained_copy, {"model": {"arch": "tests.stages.test_train:mlp",
                                                            "kwargs": {"hidden": 24}}, "train": {"epochs": 2}}))
    result = run(cfg)
    assert result.accuracy > 0.5 and result.params == 64 * 24 + 24 + 24 * 10 + 10
    model, record = load_model(cfg.paths.dense_model)
    assert record["arch"] == "tests.stages.test_train:mlp" and record["edits"] == []
    assert model[1].out_features == 24
    assert len(json.loads(Path(cfg.paths.train_report).read_text())["epochs"]) == 2


def test_train_refuses_a_model_whose_output_is_not_one_logit_per_class(trained_copy):
    cfg = load_config(write_params(trained_copy, {"model": {"arch": "torch.nn:Identity", "kwargs": {}}}))
    with pytest.raises(ModelError, match=r"outputs shape \(1, 1, 8, 8\), expected \(batch, 10\) logits"):
        run(cfg)
