import pytest
import torch
from torch import nn

from pruning import criteria, dependency
from pruning.counting import channel_table, count_macs
from pruning.errors import GraphTraceError
from pruning.zoo import build_model


def _pruned(arch: str, shape: tuple[int, ...], ratio: float, round_to: int | None = None) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = build_model(arch, {}, shape, 10)
    pruner, _ = dependency.build_pruner(model, shape, criteria.make("l2"), ratio=ratio, scope="uniform", iterative_steps=1,
                                     round_to=round_to, max_layer_ratio=0.9, ignored=dependency.ignored_modules(model, []))
    dependency.prune_step(pruner, model)
    return model, pruner.pruning_history()


@pytest.mark.parametrize(("arch", "shape"), [("resnet", (1, 8, 8)), ("vgg", (3, 16, 16)),
                                             ("mobilenetv2", (1, 8, 8)), ("resnet1d", (1, 40))])
def test_prune_step_reduces_macs_and_keeps_the_output_shape_when_pruning_each_zoo_arch(arch, shape):
    dense = build_model(arch, {}, shape, 10)
    dense_macs, dense_params = count_macs(dense, shape)
    model, _ = _pruned(arch, shape, 0.5)
    macs, params = count_macs(model, shape)
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


def test_prune_step_names_the_layer_and_the_argument_when_the_ratio_would_empty_it():
    with pytest.raises(GraphTraceError, match=r"remove every channel of layer '[\w.]+': round_to 64") as exc:
        _pruned("resnet", (1, 8, 8), 0.5, round_to=64)
    assert exc.value.field == "round_to"
    with pytest.raises(GraphTraceError, match=r"remove every channel of layer '[\w.]+': ratio 0.97") as exc:
        _pruned("resnet", (1, 8, 8), 0.97)
    assert exc.value.field == "ratio"


def test_replay_rebuilds_the_pruned_architecture_from_the_history():
    model, history = _pruned("resnet", (1, 8, 8), 0.4)
    fresh = build_model("resnet", {}, (1, 8, 8), 10)
    dependency.replay(fresh, (1, 8, 8), history)
    assert channel_table(fresh) == channel_table(model)
    fresh.load_state_dict(model.state_dict())  # strict: every shape matches


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
        dependency.build_pruner(model, (1, 8, 8), criteria.make("l2"), ratio=0.5, scope="uniform", iterative_steps=1,
                                round_to=None, max_layer_ratio=0.9, ignored=[model.fc])


def test_ignored_modules_names_the_layer_when_it_does_not_exist():
    model = build_model("resnet", {}, (1, 8, 8), 10)
    with pytest.raises(GraphTraceError, match="no layer named 'layers.9'") as exc:
        dependency.ignored_modules(model, ["layers.9"])
    assert exc.value.field == "ignored_layers"


def test_ignored_layers_keep_their_channels():
    torch.manual_seed(0)
    model = build_model("resnet", {}, (1, 8, 8), 10)
    pruner, _ = dependency.build_pruner(model, (1, 8, 8), criteria.make("l2"), ratio=0.5, scope="uniform",
                                     iterative_steps=1, round_to=None, max_layer_ratio=0.9,
                                     ignored=dependency.ignored_modules(model, ["stem.0"]))
    dependency.prune_step(pruner, model)
    assert model.stem[0].out_channels == 16
    assert model.layers[2].conv1.out_channels == 32
