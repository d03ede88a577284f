"""The families of networks users bring, written here (not in the zoo), pruned with the default params.yaml method
config: fewer MACs, the same output shape, channel counts on the round_to grid, and a model file that rebuilds them."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from pruning import checkpoint
from pruning.counting import count_macs
from pruning.data import Data, Split
from pruning.errors import GraphTraceError
from pruning.methods import METHODS, Context, depth
from pruning.training import Optim, fit

# one worker runs this module: the default method's outcome on each family is computed once
pytestmark = pytest.mark.xdist_group("test_user_models")

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


class DenseGrowth12(nn.Module):
    """DenseNet-like with a growth rate of 12: every layer adds 12 channels (fewer than round_to 8 can round well)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 24)
        self.layers = nn.ModuleList(cbr(24 + 12 * i, 12) for i in range(4))
        self.transition = cbr(72, 32, k=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.head(self.transition(x).mean((2, 3)))


class RegNetLike(nn.Module):
    """RegNet-like bottlenecks: grouped 3x3 convolutions of group width 8 (6 groups) and 16 (4 groups)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.b1 = nn.Sequential(cbr(32, 48, k=1), cbr(48, 48, groups=6), nn.Conv2d(48, 32, 1), nn.BatchNorm2d(32))
        self.down = cbr(32, 64, stride=2)
        self.b2 = nn.Sequential(cbr(64, 64, k=1), cbr(64, 64, groups=4), nn.Conv2d(64, 64, 1), nn.BatchNorm2d(64))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.b1(x))
        x = self.down(x)
        return self.head(torch.relu(x + self.b2(x)).mean((2, 3)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: split the channels, transform one half, concatenate, shuffle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(cbr(h, h, k=1), nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h),
                                    cbr(h, h, k=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)


class ShuffleNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.u1, self.u2 = ShuffleUnit(32), ShuffleUnit(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.u2(self.u1(self.stem(x))).mean((2, 3)))


FAMILIES = [Residual, SqueezeExcitation, DenseConcat, DenseGrowth12, Depthwise, Grouped, RegNetLike]


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")  # session: built once even when other modules' tests run between this one's
def default_pruned(data, tmp_path_factory):
    """The default method's outcome (params.yaml's values) on a family, computed once per module: several tests read
    it, none changes it."""
    cache: dict[type[nn.Module], Any] = {}

    def get(family: type[nn.Module]) -> Any:
        if family not in cache:
            cache[family] = METHODS["channel"].apply(_trained(family, data), METHODS["channel"].Config(),
                                                     _ctx(family, data, tmp_path_factory.mktemp("pruned")))
        return cache[family]
    return get


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_the_default_method_prunes_every_family_and_the_model_file_rebuilds_it(family, data, tmp_path, default_pruned):
    dense_macs = count_macs(_trained(family, data), SHAPE)[0]
    cfg = METHODS["channel"].Config()  # the defaults, which are params.yaml's values
    out = default_pruned(family)
    pruned = out.model
    assert count_macs(pruned, SHAPE)[0] < 0.75 * dense_macs
    x = data.test.x[:4]
    assert pruned(x).shape == (4, 10)
    # the asked share of channels, to within 10 %, rounded to the nearest counts (not always down)
    assert abs(out.report["achieved_ratio"] - cfg.ratio) <= 0.1 * cfg.ratio, out.report["channel_plan"]
    planned = {r["layer"]: r for r in out.report["channel_plan"]}
    modules = dict(pruned.named_modules())
    for name, row in planned.items():
        assert modules[name].out_channels == row["keep"], (name, row)
        assert row["keep"] % cfg.round_to == 0 or row["keep"] == row["channels"] or "channel groups" in row["note"]
        assert row["keep"] % row["groups"] == 0  # a grouped convolution keeps the same channels in every group
    # the model file: the family's builder, the edits replayed, the weights loaded strictly
    path = tmp_path / "m.pt"
    checkpoint.save_model(path, pruned, arch=f"tests.test_user_models:{family.__name__}", kwargs={},
                          input_shape=SHAPE, num_classes=10, edits=out.edits)
    loaded, _ = checkpoint.load_model(path, arch=f"tests.test_user_models:{family.__name__}")
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned.eval()(x))


def test_the_squeeze_layers_too_narrow_for_round_to_stay_dense_and_the_report_says_so(default_pruned):
    out = default_pruned(SqueezeExcitation)
    assert out.model.se[1].out_channels == 4 and out.model.expand[0].out_channels < 64
    assert out.report["plan_notes"] == ["se.1 (4 -> 4): kept dense: narrower than round_to 8"]


def test_rounding_goes_to_the_nearest_count_so_the_ratio_is_the_asked_one(default_pruned):
    """ratio 0.35 of 32- and 64-channel layers: torch-pruning's always-down rounding kept 16 of 32 and 40 of 64 (a
    41.7 % cut, 3.1x MACs); the plan keeps 24 of 32 and 40 of 64 (33.3 %)."""
    out = default_pruned(Residual)
    assert out.model.stem[0].out_channels == 24 and out.model.down[0].out_channels == 40
    assert out.report["achieved_ratio"] == pytest.approx(1 - (24 + 40) / (32 + 64))


def test_grouped_convolutions_are_pruned_in_every_group_alike(default_pruned):
    out = default_pruned(RegNetLike)
    b2 = out.model.b2[1][0]
    assert b2.groups == 4 and b2.out_channels < 64 and b2.out_channels % 4 == 0 and b2.in_channels % 4 == 0
    assert {r["layer"] for r in out.report["channel_plan"] if r["groups"] > 1} >= {"b1.0.0", "b2.0.0"}


def test_ignored_layers_take_glob_patterns(data, tmp_path):
    cfg = METHODS["channel"].Config(ignored_layers=["b?.0.*"])  # the first conv of every residual block
    out = METHODS["channel"].apply(_trained(Residual, data), cfg, _ctx(Residual, data, tmp_path))
    assert out.model.b1[0][0].out_channels == 32 and out.model.b2[0][0].out_channels == 64
    assert out.model.stem[0].out_channels < 32
    with pytest.raises(GraphTraceError, match=r"pattern 'nothing\.\*' matches no layer") as err:
        METHODS["channel"].apply(_trained(SqueezeExcitation, data), METHODS["channel"].Config(
            ignored_layers=["nothing.*"]), _ctx(SqueezeExcitation, data, tmp_path))
    assert err.value.field == "ignored_layers"


def test_a_channel_shuffle_torch_pruning_cannot_map_is_one_line_naming_the_operation_and_the_layer_to_ignore(
        data, tmp_path):
    cfg = METHODS["channel"].Config()
    with pytest.raises(GraphTraceError) as err:
        METHODS["channel"].apply(_trained(ShuffleNetLike, data), cfg, _ctx(ShuffleNetLike, data, tmp_path))
    message = str(err.value)
    assert "\n" not in message and "a reshape (view / flatten / transpose: e.g. a channel shuffle)" in message
    layer = message.split("add '")[1].split("'")[0]
    out = METHODS["channel"].apply(_trained(ShuffleNetLike, data), cfg.model_copy(update={"ignored_layers": [layer]}),
                                   _ctx(ShuffleNetLike, data, tmp_path))  # the advice works
    assert out.model(data.test.x[:2]).shape == (2, 10) and out.report["achieved_ratio"] > 0.1


@pytest.mark.parametrize("family", [Residual, SqueezeExcitation, Grouped], ids=lambda f: f.__name__)
def test_the_depth_method_with_its_defaults_removes_a_residual_block_of_every_family_that_has_one(family, data,
                                                                                                   tmp_path):
    model = _trained(family, data)
    before = sum(p.numel() for p in model.parameters())
    out = depth.apply(model, depth.Config(), _ctx(family, data, tmp_path))
    assert len(out.report["removed_blocks"]) == 1
    assert sum(p.numel() for p in out.model.parameters()) < before
    assert out.model(data.test.x[:2]).shape == (2, 10)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_every_family_goes_through_prune_export_quantize_evaluate_with_the_default_params(family, in_tmp):
    """params.yaml as it ships (its method, rounding, export, quantization, gates), only the data, the architecture
    and short training changed: no ignored_layers needed, the asked ratio reached to within 10 %."""
    import json

    import numpy as np
    import yaml

    from pruning.config import load_config
    from pruning.stages import STAGES
    from tests.conftest import REPO, merge

    gen = np.random.default_rng(0)
    x = gen.standard_normal((160, *SHAPE)).astype(np.float32)
    feature = x[:, 0].mean((1, 2))
    y = np.digitize(feature, np.quantile(feature, np.linspace(0.1, 0.9, 9))).astype(np.int64)  # 10 classes
    np.savez(in_tmp / "mine.npz", x=x, y=y)
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    params = merge(shipped, {"device": "cpu", "data": {"source": "npz", "path": "mine.npz"},
                             "model": {"arch": f"tests.test_user_models:{family.__name__}", "kwargs": {}},
                             "train": {"epochs": 1}, "finetune": {"epochs": 1}, "tracking": {"enabled": False},
                             # timing is not what this tests: the tiny config's few rounds, not the shipped 5 x 20
                             "evaluate": {"batch_size": 16, "warmup": 1, "repeats": 3, "rounds": 1}})
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = load_config(in_tmp / "params.yaml")
    for stage in STAGES:
        stage.fn(cfg, in_tmp)
    prune = json.loads((in_tmp / cfg.paths.prune_report).read_text())
    assert abs(prune["achieved_ratio"] - cfg.prune.ratio) <= 0.1 * cfg.prune.ratio
    metrics = json.loads((in_tmp / cfg.paths.metrics).read_text())
    assert metrics["macs_reduction"] > 1.5 and metrics["parity_score"] <= 1.0
    assert metrics["quantized"]["macs"] == metrics["pruned"]["macs"] and 0 <= metrics["quantized"]["accuracy"] <= 1
    verdict = json.loads((in_tmp / cfg.paths.gates).read_text())  # a verdict on every gate, pass or fail
    assert {c["name"] for c in verdict["checks"]} == set(cfg.gates)
