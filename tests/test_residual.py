"""Residual blocks found from the graph on networks written the ways users write them (none of them from the zoo)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pruning import residual
from pruning.zoo import build_model

SHAPE = (3, 8, 8)


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class FlatResidual(nn.Module):
    """The adds in the model's own forward: ``x = x + block(x)``, and a squeeze-excitation-style broadcast add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.block1 = nn.Sequential(conv_bn(8, 8), nn.Conv2d(8, 8, 3, 1, 1))
        self.block2 = nn.Sequential(conv_bn(8, 8), nn.Conv2d(8, 8, 3, 1, 1))
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1))  # (N, 8, 1, 1): broadcast, not residual
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block1(x)
        x = x + self.block2(x)
        x = x + self.gate(x)
        return self.head(x.mean((2, 3)))


class TorchvisionStyleBlock(nn.Module):
    """torchvision's BasicBlock shape: ``out += identity`` then an in-place ReLU; ``downsample`` None or a projection."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class BlockNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.stage = nn.Sequential(TorchvisionStyleBlock(8, 8, 1), TorchvisionStyleBlock(8, 16, 2),
                                   TorchvisionStyleBlock(16, 16, 1))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)).mean((2, 3)))


class NotResidual(nn.Module):
    """Adds that are not residuals: two parallel branches, a concat (dense connection), a branch that feeds more than
    the add, and a module with data-dependent control flow (not traceable) whose child holds a real residual."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(3, 8, 1)
        self.dense = conv_bn(8, 8)
        self.shared = conv_bn(16, 16)
        self.dynamic = _Dynamic()
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x) + self.b(x)  # inception-like: the "shortcut" is as deep as the "branch"
        x = torch.cat([x, self.dense(x)], 1)  # densenet-like
        y = self.shared(x)
        x = x + y + y.mean()  # y feeds two ops
        return self.head(self.dynamic(x).mean((2, 3)))


class _Dynamic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = FlatInner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) if x.sum() > -1e9 else x  # data-dependent: torch.fx cannot trace this module


class FlatInner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = conv_bn(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def _eval(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def test_find_names_the_adds_of_a_flat_forward_by_their_branch_and_skips_a_broadcast_add():
    blocks = residual.find(_eval(FlatResidual()), SHAPE)
    assert list(blocks) == ["block1", "block2"]
    assert blocks["block1"].owner == "" and blocks["block1"].branch == ("block1",)


def test_find_sees_torchvision_style_blocks_with_identity_and_projection_shortcuts():
    blocks = residual.find(_eval(BlockNet()), SHAPE)
    assert list(blocks) == ["stage.0", "stage.1", "stage.2"]
    assert "stage.1.downsample" not in blocks["stage.1"].branch  # the projection is the shortcut, not the branch
    assert set(blocks["stage.1"].branch) == {"stage.1.conv1", "stage.1.bn1", "stage.1.relu", "stage.1.conv2",
                                             "stage.1.bn2"}


def test_find_rejects_parallel_paths_concats_and_shared_branches_and_looks_inside_untraceable_modules():
    assert list(residual.find(_eval(NotResidual()), (3, 8, 8))) == ["dynamic.inner"]


@pytest.mark.parametrize("names", [["block1"], ["block2"], ["block1", "block2"]])
def test_remove_computes_the_network_without_the_branch_and_drops_its_parameters(names):
    model = _eval(FlatResidual())
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():  # the network by hand, with the removed branches taken out
        h = model.stem(x)
        for name in ("block1", "block2"):
            h = h if name in names else h + getattr(model, name)(h)
        expected = model.head((h + model.gate(h)).mean((2, 3)))
    n_before = sum(p.numel() for p in model.parameters())
    branch = sum(p.numel() for n in names for p in getattr(model, n).parameters())
    shorter = residual.remove(copy.deepcopy(model), names, SHAPE)
    with torch.no_grad():
        assert torch.allclose(shorter(x), expected, atol=1e-6)
    assert sum(p.numel() for p in shorter.parameters()) == n_before - branch


def test_remove_keeps_the_projection_and_replays_on_a_fresh_model_by_name():
    model = _eval(BlockNet())
    shorter = residual.remove(copy.deepcopy(model), ["stage.0", "stage.1"], SHAPE)
    assert isinstance(shorter.stage[1].downsample, nn.Sequential)  # the strided 1x1 projection stays
    assert not hasattr(shorter.stage[1], "conv1")
    fresh = residual.remove(BlockNet(), ["stage.0", "stage.1"], SHAPE)
    fresh.load_state_dict(shorter.state_dict(), strict=True)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), shorter(x))
        # stage.0 had an identity shortcut followed by an in-place ReLU: its input is handed on as a copy
        assert torch.equal(shorter.stage[0](model.stem(x)), torch.relu(model.stem(x)))


def test_a_model_without_a_block_trains_after_an_in_place_activation_on_the_shortcut():
    shorter = residual.remove(_eval(BlockNet()), ["stage.0", "stage.2"], SHAPE).train()
    loss = shorter(torch.randn(4, *SHAPE)).sum()
    loss.backward()  # with the shortcut itself handed to ReLU(inplace=True) this raised in autograd
    assert shorter.stem[0].weight.grad is not None


def test_remove_names_the_removable_blocks_and_changes_nothing_when_a_name_is_bad():
    model = _eval(BlockNet())
    text = str(model)
    with pytest.raises(ValueError, match=r"cannot remove 'stage.9': not a residual block of this model; removable "
                                         r"blocks: stage.0, stage.1, stage.2"):
        residual.remove(model, ["stage.0", "stage.9"], SHAPE)
    with pytest.raises(ValueError, match="'stage.0': repeated block"):
        residual.remove(model, ["stage.0", "stage.0"], SHAPE)
    assert str(model) == text  # names are all checked before anything is replaced


@pytest.mark.parametrize(("arch", "kwargs", "shape", "expected"), [
    ("resnet", {"widths": [8, 16, 16], "blocks": [2, 1, 1]}, (1, 8, 8), ["layers.0", "layers.1", "layers.2", "layers.3"]),
    ("mobilenetv2", {}, (1, 8, 8), ["features.1", "features.3", "features.5"]),
])
def test_find_sees_the_zoo_blocks_too(arch, kwargs, shape, expected):
    assert list(residual.find(build_model(arch, kwargs, shape, 10), shape)) == expected
