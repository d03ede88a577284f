import pytest
import torch
from torch import nn

from pruning import surgery
from pruning.config import PruneConfig
from pruning.errors import ConfigError, GraphTraceError
from pruning.importance import make_importance
from pruning.zoo import build_model


def _pruned(arch: str, shape: tuple[int, ...], ratio: float, round_to: int | None = None) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = build_model(arch, {}, shape, 10)
    pruner = surgery.build_pruner(model, shape, make_importance("l2"), ratio=ratio, scope="uniform", iterative_steps=1,
                                  round_to=round_to, max_layer_ratio=0.9, ignored=surgery.ignored_modules(model, []))
    surgery.prune_step(pruner, model)
    return model, pruner.pruning_history()


@pytest.mark.parametrize(("arch", "shape"), [("resnet", (1, 8, 8)), ("vgg", (3, 16, 16)),
                                             ("mobilenetv2", (1, 8, 8)), ("resnet1d", (1, 40))])
def test_prune_step_reduces_macs_and_keeps_the_output_shape_when_pruning_each_zoo_arch(arch, shape):
    dense = build_model(arch, {}, shape, 10)
    dense_macs, dense_params = surgery.count_macs(dense, shape)
    model, _ = _pruned(arch, shape, 0.5)
    macs, params = surgery.count_macs(model, shape)
    # a 50 % channel ratio removes ~3/4 of the MACs of every inner conv; the stem input and classifier output stay
    assert macs < 0.45 * dense_macs
    assert params < 0.45 * dense_params
    assert model.eval()(torch.randn(2, *shape)).shape == (2, 10)


def test_prune_step_keeps_the_classifier_outputs():
    model, _ = _pruned("resnet", (1, 8, 8), 0.5)
    assert model.classifier.out_features == 10
    assert model.classifier.in_features == 32  # its inputs follow the pruned last stage (64 -> 32)


def test_prune_step_rounds_channel_counts_when_round_to_is_set():
    model, _ = _pruned("resnet", (1, 8, 8), 0.3, round_to=8)
    outs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c % 8 == 0 for c in outs), outs


def test_prune_step_names_the_layer_when_the_ratio_would_empty_it():
    with pytest.raises(GraphTraceError, match=r"remove every channel of layer '[\w.]+': prune.round_to 64"):
        _pruned("resnet", (1, 8, 8), 0.5, round_to=64)
    with pytest.raises(GraphTraceError, match=r"remove every channel of layer '[\w.]+': prune.ratio 0.97"):
        _pruned("resnet", (1, 8, 8), 0.97)


def test_save_model_round_trips_a_pruned_model_with_weights_only_load(tmp_path):
    model, history = _pruned("resnet", (1, 8, 8), 0.4)
    path = tmp_path / "pruned.pt"
    surgery.save_model(path, model, arch="resnet", kwargs={}, input_shape=(1, 8, 8), num_classes=10, history=history,
                       meta={"stage": "test"})
    record = torch.load(path, weights_only=True)  # the proof: no pickled code in the file
    assert record["arch"] == "resnet" and record["history"]
    loaded, _ = surgery.load_model(path)
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    assert surgery.channel_table(loaded) == surgery.channel_table(model)


def test_load_model_rejects_a_pickled_module():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/evil.pt"
        torch.save(nn.Linear(2, 2), path)  # a whole pickled module: refused by weights_only
        with pytest.raises(Exception, match="not a model file of this pipeline"):
            surgery.load_model(path)


class _Opaque(nn.Module):
    def forward(self, x):
        raise RuntimeError("custom op torch-pruning cannot see")


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.custom = _Opaque()
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.custom(self.conv(x)).mean((2, 3)))


def test_build_pruner_names_the_layer_when_the_model_cannot_be_traced():
    model = _Untraceable()
    with pytest.raises(GraphTraceError, match=r"cannot trace the model \(failed in layer 'custom'\): RuntimeError"):
        surgery.build_pruner(model, (1, 8, 8), make_importance("l2"), ratio=0.5, scope="uniform", iterative_steps=1,
                             round_to=None, max_layer_ratio=0.9, ignored=[model.fc])


def test_ignored_modules_names_the_layer_when_it_does_not_exist():
    model = build_model("resnet", {}, (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="no layer named 'layers.9'"):
        surgery.ignored_modules(model, ["layers.9"])


def test_ignored_layers_keep_their_channels():
    torch.manual_seed(0)
    model = build_model("resnet", {}, (1, 8, 8), 10)
    cfg = PruneConfig(ratio=0.5, ignored_layers=["stem.0"])
    pruner = surgery.build_pruner(model, (1, 8, 8), make_importance("l2"), ratio=0.5, scope="uniform",
                                  iterative_steps=1, round_to=None, max_layer_ratio=0.9,
                                  ignored=surgery.ignored_modules(model, cfg.ignored_layers))
    surgery.prune_step(pruner, model)
    assert model.stem[0].out_channels == 16
    assert model.layers[2].conv1.out_channels == 32
