from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning.data import Data, Split
from pruning.methods import Context, unstructured
from pruning.methods.unstructured import layer_sparsity, magnitude_prune, make_permanent, prunable_layers, weight_sparsity
from pruning.zoo import build_model


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet", {"widths": [4, 8, 8]}, (1, 8, 8), 10)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


def zeros_and_sizes(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (int((m.weight == 0).sum()), m.weight.numel()) for n, m in prunable_layers(model)}


def test_magnitude_prune_masks_exactly_round_of_sparsity_when_scope_is_global():
    model = tiny_resnet()
    magnitude_prune(model, 0.7, "global")
    counts = zeros_and_sizes(model)
    n = sum(size for _, size in counts.values())
    assert sum(z for z, _ in counts.values()) == round(0.7 * n)
    assert weight_sparsity(model) == pytest.approx(round(0.7 * n) / n)


def test_magnitude_prune_gives_each_layer_its_share_when_scope_is_layer():
    model = tiny_resnet()
    magnitude_prune(model, 0.6, "layer")
    for name, (zeros, size) in zeros_and_sizes(model).items():
        assert zeros == round(0.6 * size), name


def test_magnitude_prune_spreads_sparsity_unevenly_when_scope_is_global():
    global_model, layer_model = tiny_resnet(), tiny_resnet()
    magnitude_prune(global_model, 0.6, "global")
    magnitude_prune(layer_model, 0.6, "layer")
    per_global, per_layer = layer_sparsity(global_model), layer_sparsity(layer_model)
    # Kaiming init scales weights by 1/sqrt(fan_in): one global ranking hits wide-fan-in layers hardest
    assert max(per_global.values()) - min(per_global.values()) > 0.3  # measured 0.62 (0.09 to 0.71)
    assert max(per_layer.values()) - min(per_layer.values()) < 0.05  # rounding on the 36-weight stem only


def test_magnitude_prune_removes_the_smallest_magnitudes_when_scope_is_global():
    model = tiny_resnet()
    before = {n: m.weight.detach().abs().clone() for n, m in prunable_layers(model)}
    magnitude_prune(model, 0.5, "global")
    pruned = torch.cat([before[n][m.weight_mask == 0] for n, m in prunable_layers(model)])
    kept = torch.cat([before[n][m.weight_mask == 1] for n, m in prunable_layers(model)])
    assert pruned.max() <= kept.min()


def test_magnitude_prune_extends_existing_masks_when_called_again_with_higher_sparsity():
    model = tiny_resnet()
    magnitude_prune(model, 0.5, "global")
    first = {n: m.weight_mask.clone() for n, m in prunable_layers(model)}
    magnitude_prune(model, 0.75, "global")
    n = sum(m.weight.numel() for _, m in prunable_layers(model))
    assert sum(int((m.weight_mask == 0).sum()) for _, m in prunable_layers(model)) == round(0.75 * n)
    for name, m in prunable_layers(model):
        assert torch.all(m.weight_mask[first[name] == 0] == 0), name  # never un-prunes


def test_magnitude_prune_leaves_ignored_layers_dense_when_given():
    model = tiny_resnet()
    magnitude_prune(model, 0.8, "global", ignored=[model.classifier])
    assert not hasattr(model.classifier, "weight_mask")
    assert layer_sparsity(model)["classifier"] == 0.0


@pytest.mark.parametrize(("kwargs", "match"), [({"sparsity": 1.0}, "1.0"), ({"sparsity": -0.1}, "-0.1"),
                                               ({"sparsity": 0.5, "scope": "uniform"}, "uniform")])
def test_magnitude_prune_raises_naming_the_value_when_argument_is_invalid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        magnitude_prune(tiny_resnet(), **kwargs)


def test_magnitude_prune_keeps_masked_weights_zero_when_trained_with_hooks_on():
    model = tiny_resnet()
    magnitude_prune(model, 0.8, "global")
    masks = {n: m.weight_mask.clone() for n, m in prunable_layers(model)}
    before = {n: m.weight_orig.detach().clone() for n, m in prunable_layers(model)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model(x)  # the pre-hooks recompute weight = weight_orig * weight_mask
    for name, m in prunable_layers(model):
        assert torch.all(m.weight[masks[name] == 0] == 0), name
        assert not torch.equal(m.weight_orig[masks[name] == 1], before[name][masks[name] == 1]), name  # it trained
    assert weight_sparsity(model) >= 0.8 - 1e-3


def test_make_permanent_leaves_plain_weights_without_hooks_when_model_was_pruned():
    model = tiny_resnet().eval()
    magnitude_prune(model, 0.7, "layer")
    x = torch.randn(4, 1, 8, 8)
    expected, sparsity = model(x), weight_sparsity(model)
    make_permanent(model)
    for name, m in model.named_modules():
        assert not m._forward_pre_hooks, name
        assert not any(n.endswith("_orig") for n, _ in m.named_parameters(recurse=False)), name
        assert not any(n.endswith("_mask") for n, _ in m.named_buffers(recurse=False)), name
    assert all(not k.endswith(("_orig", "_mask")) for k in model.state_dict())
    assert weight_sparsity(model) == sparsity
    assert torch.equal(model(x), expected)


def test_weight_sparsity_ignores_biases_and_batchnorm_when_they_are_zero():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1, 2, 3]] * 4))
        model[0].bias.zero_()
        model[1].bias.zero_()
    assert weight_sparsity(model) == 0.25


def test_apply_zeroes_the_share_of_weights_records_a_mask_edit_and_keeps_shapes():
    torch.manual_seed(0)
    data = Data(Split(torch.randn(128, 1, 8, 8), torch.randint(0, 10, (128,))),
                Split(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))), (1, 8, 8), 10)
    ctx = Context(data=data, seed=0, device="cpu", build=tiny_resnet, latency_table=None, opset=17)  # type: ignore[arg-type]
    model = tiny_resnet()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    out = unstructured.apply(model, unstructured.Config(sparsity=0.75, ignored_layers=["classifier"]), ctx)
    assert {k: v.shape for k, v in out.model.state_dict().items()} == shapes  # nothing removed, only zeroed
    (edit,) = out.edits
    assert edit["kind"] == "mask" and "classifier" not in edit["layers"] and "stem.0" in edit["layers"]
    assert int((out.model.classifier.weight == 0).sum()) == 0  # an ignored layer stays dense
    zeros = sum(int((out.model.get_submodule(n).weight == 0).sum()) for n in edit["layers"])
    total = sum(out.model.get_submodule(n).weight.numel() for n in edit["layers"])
    assert zeros / total == pytest.approx(0.75, abs=0.01)
    assert out.steps[1]["macs"] == out.steps[0]["macs"]  # dense kernels: the MACs count does not move
