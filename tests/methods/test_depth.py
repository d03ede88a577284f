"""Depth pruning: the block criteria, the lowest-scoring blocks removed, replay, and the method on a user's network."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from pruning import residual
from pruning.arrays import load_split
from pruning.data import Data, DataConfig, Split
from pruning.errors import PruningError
from pruning.methods import Context, depth
from pruning.training import Optim, fit
from pruning.zoo import build_model
from pruning.zoo.mobilenet import InvertedResidual
from pruning.zoo.resnet import BasicBlock

# one worker runs this module: its costly fixture is built once, not once per xdist worker
pytestmark = pytest.mark.xdist_group("test_depth")

RESNET: tuple[str, dict[str, Any], tuple[int, ...]] = ("resnet", {"widths": [8, 16, 16], "blocks": [2, 2, 2]}, (1, 8, 8))
RESNET1D: tuple[str, dict[str, Any], tuple[int, ...]] = ("resnet1d", {"widths": [8, 16, 16], "blocks": [2, 2, 2]}, (1, 40))
MOBILENET: tuple[str, dict[str, Any], tuple[int, ...]] = ("mobilenetv2", {}, (1, 8, 8))
ARCHS = [RESNET, RESNET1D, MOBILENET]


class UserNet(nn.Module):
    """A residual network written as users write them: the adds in its own forward, no block class at all."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.res = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                               nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width))
                                 for _ in range(3))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.res:
            x = torch.relu(x + block(x))
        return self.head(x.mean((2, 3)))


def _model(arch: str, kwargs: dict[str, Any], shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """A fresh model in eval mode whose BatchNorm statistics are not the trivial (0, 1), so BN layers do something."""
    torch.manual_seed(seed)
    model = build_model(arch, kwargs, shape, 10)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def _branch_params(block: nn.Module) -> int:
    """Parameters of the residual branch F alone (what removal must take away; the shortcut's layers stay)."""
    if isinstance(block, BasicBlock):
        return sum(p.numel() for m in (block.conv1, block.bn1, block.conv2, block.bn2) for p in m.parameters())
    return sum(p.numel() for p in block.block.parameters())


def _zero_branch(block: nn.Module) -> None:
    """Make F(x) == 0 exactly: the last BatchNorm of the branch gets weight 0 and bias 0."""
    bn = block.bn2 if isinstance(block, BasicBlock) else block.block[-1][1]
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.zero_()


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="session")
def digits() -> Split:
    (x, y), _ = load_split(DataConfig(), 0)
    return Split(torch.from_numpy(x[:256]), torch.from_numpy(y[:256]))


@pytest.fixture(scope="session")  # session: built once even when other modules' tests run between this one's
def trained_resnet(digits) -> nn.Module:
    """The tiny ResNet after 3 quick epochs on 256 digits: enough for blocks to matter to the loss."""
    torch.manual_seed(0)
    model = build_model(*RESNET[:2], RESNET[2], 10)
    fit(model, digits, Optim(epochs=3, batch_size=32, lr=0.05), seed=0, desc="depth test")
    return model.eval()


@pytest.mark.parametrize(("arch", "kwargs", "shape"), ARCHS)
def test_remove_drops_exactly_the_branch_params_of_each_zoo_block(arch, kwargs, shape):
    model = _model(arch, kwargs, shape)
    for name in residual.find(model, shape):
        block = model.get_submodule(name)
        shorter = residual.remove(copy.deepcopy(model), [name], shape)
        assert _n_params(shorter) == _n_params(model) - _branch_params(block), name


@pytest.mark.parametrize(("arch", "kwargs", "shape"), ARCHS)
def test_remove_keeps_the_output_exactly_when_every_residual_branch_is_zero(arch, kwargs, shape):
    model = _model(arch, kwargs, shape)
    names = list(residual.find(model, shape))
    for name in names:
        _zero_branch(model.get_submodule(name))
    x = torch.randn(4, *shape)
    with torch.no_grad():
        before = model(x)
        after = residual.remove(copy.deepcopy(model), names, shape)(x)
    assert torch.allclose(before, after, atol=1e-6)


@pytest.mark.parametrize("criterion", ["loss_change", "norm"])
def test_block_scores_leave_the_model_unchanged(trained_resnet, digits, criterion):
    model = copy.deepcopy(trained_resnet).train()
    text, state = str(model), copy.deepcopy(model.state_dict())
    scores = depth.block_scores(model, digits, criterion)
    assert list(scores) == list(residual.find(model, (1, 8, 8)))
    assert str(model) == text and model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_block_scores_are_zero_for_a_block_whose_branch_is_zero(trained_resnet, digits):
    model = copy.deepcopy(trained_resnet)
    _zero_branch(model.layers[3])
    for criterion in ("loss_change", "norm"):
        scores = depth.block_scores(model, digits, criterion)
        assert scores["layers.3"] == pytest.approx(0.0, abs=1e-6)
        assert min(scores, key=scores.get) == "layers.3"


def test_block_scores_reject_an_unknown_criterion(digits):
    with pytest.raises(ValueError, match="unknown depth criterion 'magic'"):
        depth.block_scores(_model(*RESNET), digits, "magic")


@pytest.mark.parametrize("criterion", ["loss_change", "norm"])
def test_prune_blocks_removes_the_lowest_scores_and_replays_on_a_fresh_model(trained_resnet, digits, criterion):
    model = copy.deepcopy(trained_resnet)
    scores = depth.block_scores(model, digits, criterion)
    model, names = depth.prune_blocks(model, digits, 2, criterion)
    assert names == sorted(scores, key=scores.get)[:2]
    assert len(residual.find(model, (1, 8, 8))) == 4
    fresh = residual.remove(build_model(*RESNET[:2], RESNET[2], 10), names, RESNET[2])
    assert str(fresh) == str(model)
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(digits.x[:8]), model.eval()(digits.x[:8]))


def test_prune_blocks_rejects_more_blocks_than_the_model_has(digits):
    model = _model(*MOBILENET)
    with pytest.raises(ValueError, match=r"cannot remove 4 blocks: the model has 3 removable .*choose 0..3"):
        depth.prune_blocks(model, digits, 4)
    with pytest.raises(ValueError, match="cannot remove -1 blocks"):
        depth.prune_blocks(model, digits, -1)
    assert depth.prune_blocks(model, digits, 0) == (model, [])
    assert any(isinstance(m, InvertedResidual) for m in model.modules())


def test_apply_removes_a_block_from_a_residual_network_defined_here(digits):
    torch.manual_seed(0)
    model = UserNet()
    fit(model, digits, Optim(epochs=2, batch_size=32, lr=0.05), seed=0, desc="user net")
    data = Data(digits, digits, (1, 8, 8), 10)
    ctx = Context(data=data, seed=0, device="cpu", build=UserNet, latency_table=None, opset=17)  # type: ignore[arg-type]
    before = _n_params(model)
    out = depth.apply(model, depth.Config(blocks=1), ctx)
    (removed,) = out.report["removed_blocks"]
    assert removed in {"res.0", "res.1", "res.2"}
    assert out.edits == [{"kind": "blocks", "names": [removed]}]
    assert _n_params(out.model) == before - sum(p.numel() for p in model.get_submodule(removed).parameters())
    assert out.steps[1]["macs"] < out.steps[0]["macs"] and out.model(digits.x[:2]).shape == (2, 10)
    with pytest.raises(PruningError, match="cannot remove 9 blocks") as exc:
        depth.apply(UserNet(), depth.Config(blocks=9), ctx)
    assert exc.value.field == "blocks"


def test_apply_scores_its_step_records_with_the_task_of_its_context():
    """A regression task (mse loss and metric, float targets): the step records hold the task's metric and loss, as
    evaluate computes them, not cross-entropy and accuracy (depth once scored every task as classification)."""
    from pruning.task import TaskConfig, build_task
    from pruning.training import evaluate

    torch.manual_seed(0)
    x = torch.randn(96, 1, 8, 8)
    split = Split(x, x.mean((1, 2, 3)).unsqueeze(1).repeat(1, 10))  # 10 float targets per sample
    task = build_task(TaskConfig(loss="mse", metric="mse"))
    ctx = Context(data=Data(split, split, (1, 8, 8), 10), seed=0, device="cpu", build=UserNet, latency_table=None,  # type: ignore[arg-type]
                  opset=17, task=task)
    model = UserNet().eval()
    out = depth.apply(copy.deepcopy(model), depth.Config(blocks=1, bn_recalibration=False), ctx)
    metric, loss = evaluate(model, split, task=task)
    assert out.steps[0]["accuracy"] == pytest.approx(metric) and out.steps[0]["loss"] == pytest.approx(loss)
    assert metric == pytest.approx(loss)  # mse both ways: a classification score would differ (and fail on floats)
    metric, loss = evaluate(out.model, split, task=task)
    assert out.steps[1]["accuracy"] == pytest.approx(metric) and out.steps[1]["loss"] == pytest.approx(loss)
