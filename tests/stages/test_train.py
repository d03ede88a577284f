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
    model, record = load_model(cfg.paths.dense_model, cfg.model.arch)
    assert record["arch"] == "tests.stages.test_train:mlp" and record["edits"] == []
    assert model[1].out_features == 24
    assert len(json.loads(Path(cfg.paths.train_report).read_text())["epochs"]) == 2


def test_train_refuses_a_model_whose_output_is_not_one_logit_per_class(trained_copy):
    cfg = load_config(write_params(trained_copy, {"model": {"arch": "torch.nn:Identity", "kwargs": {}}}))
    with pytest.raises(ModelError, match=r"outputs shape \(1, 1, 8, 8\), expected \(batch, 10\) logits"):
        run(cfg)


def _user_weights(directory: Path, hidden: int = 24) -> tuple[nn.Module, Path]:
    """A user's trained model (here: random weights, which makes a wrong load visible) saved the way a training script
    wrapped in DataParallel saves it: a checkpoint dict, keys prefixed by ``module.``."""
    import torch

    torch.manual_seed(7)
    model = mlp(hidden)
    (directory / "weights").mkdir(exist_ok=True)
    path = directory / "weights" / "mine.pt"
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return model.eval(), path


def test_train_with_epochs_0_records_the_given_weights_as_the_dense_baseline(trained_copy):
    import torch

    from pruning.data import load_data
    from pruning.training import evaluate

    given, _ = _user_weights(trained_copy)
    cfg = load_config(write_params(trained_copy, {"model": {"arch": "tests.stages.test_train:mlp",
                                                            "kwargs": {"hidden": 24}, "weights": "weights/mine.pt"},
                                                  "train": {"epochs": 0}}))
    result = run(cfg)
    data = load_data(cfg.paths.train_data, cfg.paths.test_data, cfg.paths.data_meta)
    accuracy, loss = evaluate(given, data.test)
    assert (result.accuracy, result.loss) == (accuracy, loss)  # the very weights, untrained
    dense, _ = load_model(cfg.paths.dense_model, cfg.model.arch)
    for (name, a), b in zip(dense.state_dict().items(), given.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    report = json.loads(Path(cfg.paths.train_report).read_text())
    assert report["epochs"] == [] and report["weights"] == "weights/mine.pt" and report["macs"] > 0


def test_train_continues_from_the_given_weights_when_epochs_are_asked(trained_copy):
    from pruning.data import load_data
    from pruning.training import evaluate

    given, _ = _user_weights(trained_copy)
    cfg = load_config(write_params(trained_copy, {"model": {"arch": "tests.stages.test_train:mlp",
                                                            "kwargs": {"hidden": 24}, "weights": "weights/mine.pt"},
                                                  "train": {"epochs": 1}}))
    result = run(cfg)
    before, _ = evaluate(given, load_data(cfg.paths.train_data, cfg.paths.test_data, cfg.paths.data_meta).test)
    assert result.accuracy > before + 0.1
    assert len(json.loads(Path(cfg.paths.train_report).read_text())["epochs"]) == 1


def test_weights_that_do_not_fit_the_architecture_name_the_keys_in_one_line(trained_copy):
    _user_weights(trained_copy, hidden=24)
    cfg = load_config(write_params(trained_copy, {"model": {"arch": "tests.stages.test_train:mlp",
                                                            "kwargs": {"hidden": 32}, "weights": "weights/mine.pt"},
                                                  "train": {"epochs": 0}}))
    with pytest.raises(Exception) as err:
        run(cfg)
    message = str(err.value)
    assert err.type.__name__ == "ConfigError" and "\n" not in message
    assert message.startswith('Invalid "model.weights"') and "1.weight (24, 64) vs (32, 64)" in message
