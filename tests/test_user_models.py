"""The families of networks users bring, written here (not in the zoo), pruned with the default params.yaml method
config: fewer MACs, the same output shape, channel counts on the round_to grid, and a model file that rebuilds them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning import checkpoint
from pruning.counting import count_macs
from pruning.data import Data, Split
from pruning.methods import METHODS, Context, depth
from pruning.training import Optim, fit

SHAPE = (3, 16, 16)


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.b1 = nn.Sequential(cbr(32, 32), nn.Conv2d(32, 32, 3, 1, 1), nn.BatchNorm2d(32))
        self.down = cbr(32, 64, stride=2)
        self.b2 = nn.Sequential(cbr(64, 64), nn.Conv2d(64, 64, 3, 1, 1), nn.BatchNorm2d(64))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.b1(x))
        x = self.down(x)
        x = torch.relu(x + self.b2(x))
        return self.head(x.mean((2, 3)))


class SqueezeExcitation(nn.Module):
    """MBConv-like: expand, depthwise, squeeze-excitation (4 squeeze channels), project, SiLU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.expand = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1, groups=64, bias=False), nn.BatchNorm2d(64), nn.SiLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(64, 4, 1), nn.SiLU(), nn.Conv2d(4, 64, 1),
                                nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(64, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        h = self.dw(self.expand(x))
        x = x + self.project(h * self.se(h))
        return self.head(x.mean((2, 3)))


class DenseConcat(nn.Module):
    """DenseNet-like: each layer sees the concatenation of everything before it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.l1, self.l2 = cbr(32, 32), cbr(64, 32)
        self.transition = cbr(96, 64, k=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat([x, self.l2(x)], 1)
        return self.head(self.transition(x).mean((2, 3)))


class Depthwise(nn.Module):
    """MobileNetV1-like depthwise-separable stack."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(cbr(3, 32), cbr(32, 32, groups=32), cbr(32, 64, k=1), cbr(64, 64, stride=2,
                                      groups=64), cbr(64, 128, k=1))
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class Grouped(nn.Module):
    """ResNeXt-like: grouped 3x3 convolutions (4 groups) inside a residual block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 64)
        self.block = nn.Sequential(cbr(64, 64, k=1), cbr(64, 64, groups=4), nn.Conv2d(64, 64, 1), nn.BatchNorm2d(64))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.relu(x + self.block(x)).mean((2, 3)))


FAMILIES = [Residual, SqueezeExcitation, DenseConcat, Depthwise, Grouped]


@pytest.fixture(scope="module")
def data() -> Data:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(192, *SHAPE, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    return Data(Split(x[:128], y[:128]), Split(x[128:], y[128:]), SHAPE, 10)


def _trained(family: type[nn.Module], data: Data) -> nn.Module:
    torch.manual_seed(0)
    model = family()
    fit(model, data.train, Optim(1, 32, 0.05), seed=0, desc=family.__name__)
    return model.eval()


def _ctx(family: type[nn.Module], data: Data, tmp_path) -> Context:
    return Context(data=data, seed=0, device="cpu", build=family, latency_table=tmp_path / "t.json", opset=17)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_the_default_method_prunes_every_family_and_the_model_file_rebuilds_it(family, data, tmp_path):
    model = _trained(family, data)
    dense_macs = count_macs(model, SHAPE)[0]
    cfg = METHODS["channel"].Config()  # the defaults, which are params.yaml's values
    out = METHODS["channel"].apply(model, cfg, _ctx(family, data, tmp_path))
    pruned = out.model
    assert count_macs(pruned, SHAPE)[0] < 0.75 * dense_macs
    x = data.test.x[:4]
    assert pruned(x).shape == (4, 10)
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.out_channels not in (3, 4, 10)]
    assert all(m.out_channels % cfg.round_to == 0 for m in convs), [m.out_channels for m in convs]
    # the model file: the family's builder, the edits replayed, the weights loaded strictly
    path = tmp_path / "m.pt"
    checkpoint.save_model(path, pruned, arch=f"tests.test_user_models:{family.__name__}", kwargs={},
                          input_shape=SHAPE, num_classes=10, edits=out.edits)
    loaded, _ = checkpoint.load_model(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned.eval()(x))


def test_the_squeeze_layers_too_narrow_for_round_to_stay_dense(data, tmp_path):
    out = METHODS["channel"].apply(_trained(SqueezeExcitation, data), METHODS["channel"].Config(),
                                   _ctx(SqueezeExcitation, data, tmp_path))
    assert out.model.se[1].out_channels == 4 and out.model.expand[0].out_channels < 64


@pytest.mark.parametrize("family", [Residual, SqueezeExcitation, Grouped], ids=lambda f: f.__name__)
def test_the_depth_method_with_its_defaults_removes_a_residual_block_of_every_family_that_has_one(family, data,
                                                                                                   tmp_path):
    model = _trained(family, data)
    before = sum(p.numel() for p in model.parameters())
    out = depth.apply(model, depth.Config(), _ctx(family, data, tmp_path))
    assert len(out.report["removed_blocks"]) == 1
    assert sum(p.numel() for p in out.model.parameters()) < before
    assert out.model(data.test.x[:2]).shape == (2, 10)
