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


class _TwoOutputs(nn.Module):
    """A user model that returns a dict whose first entry is not what is scored."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        features = self.body(x)
        return {"features": features, "scores": self.head(features)}


def two_outputs(hidden: int = 24) -> nn.Module:
    return _TwoOutputs(hidden)


def test_a_model_with_several_outputs_is_scored_pruned_and_exported_on_the_one_model_output_names(trained_copy):
    import onnx
    import torch
    import torch_pruning as tp

    from pruning import dependency
    from pruning.data import forward, scored_output
    from pruning.runtime.export import export_onnx
    from pruning.runtime.session import run as run_onnx
    from pruning.runtime.session import session

    cfg = load_config(write_params(trained_copy, {"model": {"arch": "tests.stages.test_train:two_outputs",
                                                            "kwargs": {}, "output": "scores"}, "train": {"epochs": 2}}))
    assert run(cfg).accuracy > 0.5  # trained on the scores, not on the features that come first
    model, record = load_model(cfg.paths.dense_model, cfg.model.arch)
    assert record["output"] == "scores" and scored_output(model) == "scores"
    pruner, _ = dependency.build_pruner(model, (1, 8, 8), tp.importance.GroupMagnitudeImportance(p=2),
                                        ratio=0.5, scope="uniform", iterative_steps=1, round_to=None,
                                        max_layer_ratio=0.9, ignored=dependency.ignored_modules(model, []))
    dependency.prune_step(pruner, model)
    assert model.head.in_features == 12 and model.head.out_features == 10  # traced through the scored output
    x = torch.randn(3, 1, 8, 8)
    export_onnx(model, (1, 8, 8), Path("m.onnx"), opset=17)
    assert len(onnx.load("m.onnx").graph.output) == 1  # the file's one output is the scored one
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(run_onnx(session("m.onnx"), x)), forward(model, x), atol=1e-5)


def test_an_output_the_model_does_not_have_is_one_line_naming_the_key_and_the_outputs(trained_copy):
    cfg = load_config(write_params(trained_copy, {"model": {"arch": "tests.stages.test_train:two_outputs",
                                                            "kwargs": {}, "output": "logits"}}))
    with pytest.raises(ModelError, match=r"Invalid \"model.output\": the model's outputs have no 'logits': it returns "
                                         r"features, scores"):
        run(cfg)
