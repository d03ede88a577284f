"""Depth pruning: which blocks are removable, what they become, the block criteria, replay, and channel pruning after."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch_pruning as tp
from torch import nn

from pruning import depth, surgery
from pruning.config import DataConfig
from pruning.data import load_split
from pruning.importance import make_importance
from pruning.train import Optim, fit
from pruning.zoo import build_model
from pruning.zoo.mobilenet import InvertedResidual
from pruning.zoo.resnet import BasicBlock

RESNET: tuple[str, dict[str, Any], tuple[int, ...]] = ("resnet", {"widths": [8, 16, 16], "blocks": [2, 2, 2]}, (1, 8, 8))
RESNET1D: tuple[str, dict[str, Any], tuple[int, ...]] = ("resnet1d", {"widths": [8, 16, 16], "blocks": [2, 2, 2]}, (1, 40))
MOBILENET: tuple[str, dict[str, Any], tuple[int, ...]] = ("mobilenetv2", {}, (1, 8, 8))
ARCHS = [RESNET, RESNET1D, MOBILENET]


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


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on these tiny tensors a second thread costs more in synchronisation than it saves, and
    under ``pytest -n 2`` on two cores it oversubscribes them (this file, with another job on the 2 cores: 21 s vs 5 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    (x, y), _ = load_split(DataConfig(), 0)
    return torch.from_numpy(x[:256]), torch.from_numpy(y[:256])


@pytest.fixture(scope="module")
def trained_resnet(digits) -> nn.Module:
    """The tiny ResNet after 3 quick epochs on 256 digits: enough for blocks to matter to the loss."""
    torch.manual_seed(0)
    model = build_model(*RESNET[:2], RESNET[2], 10)
    fit(model, *digits, Optim(epochs=3, batch_size=32, lr=0.05), seed=0, desc="depth test")
    return model.eval()


def test_removable_blocks_finds_every_basic_block_when_the_model_is_a_resnet():
    for arch, kwargs, shape in (RESNET, RESNET1D):
        blocks = depth.removable_blocks(_model(arch, kwargs, shape))
        # blocks [2, 2, 2]: six BasicBlocks, two of them (layers.2, layers.4) downsampling; all are removable
        assert list(blocks) == [f"layers.{i}" for i in range(6)]
        assert all(isinstance(b, BasicBlock) for b in blocks.values())


def test_removable_blocks_skips_inverted_residuals_without_residual_when_the_model_is_mobilenetv2():
    model = _model(*MOBILENET)
    every = [n for n, m in model.named_modules() if isinstance(m, InvertedResidual)]
    assert every == [f"features.{i}" for i in range(1, 6)]
    # features.2 and .4 open a stage (stride 2, wider): no shortcut, so not removable
    assert list(depth.removable_blocks(model)) == ["features.1", "features.3", "features.5"]


def test_removable_blocks_is_empty_when_the_model_has_no_residual_block():
    assert depth.removable_blocks(build_model("vgg", {}, (3, 16, 16), 10)) == {}


def test_shortcut_of_keeps_the_downsampling_layers_when_the_block_changes_shape():
    model = _model(*RESNET)
    assert isinstance(depth.shortcut_of(model.layers[1]), nn.Identity)
    down = depth.shortcut_of(model.layers[2])
    assert [type(m) for m in down] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert down[0] is model.layers[2].shortcut[0] and down[0].stride == (2, 2)  # same weights, same stride
    assert isinstance(depth.shortcut_of(_model(*MOBILENET).features[1]), nn.Identity)
    with pytest.raises(ValueError, match="InvertedResidual is not a removable"):
        depth.shortcut_of(_model(*MOBILENET).features[2])


@pytest.mark.parametrize(("arch", "kwargs", "shape"), ARCHS, ids=[a[0] for a in ARCHS])
def test_remove_blocks_drops_exactly_the_branch_params_and_some_macs_when_removing_each_block(arch, kwargs, shape):
    sample = torch.randn(2, *shape)
    for name in depth.removable_blocks(_model(arch, kwargs, shape)):
        model = _model(arch, kwargs, shape)
        block = model.get_submodule(name)
        macs, _ = surgery.count_macs(model, shape)
        params = _n_params(model)
        depth.remove_blocks(model, [name])
        replaced = model.get_submodule(name)
        downsampling = isinstance(block, BasicBlock) and not isinstance(block.shortcut, nn.Identity)
        assert isinstance(replaced, nn.Sequential if downsampling else nn.Identity), name
        assert params - _n_params(model) == _branch_params(block), name
        assert surgery.count_macs(model, shape)[0] < macs, name
        assert model(sample).shape == (2, 10)


@pytest.mark.parametrize(("arch", "kwargs", "shape"), ARCHS, ids=[a[0] for a in ARCHS])
def test_remove_blocks_keeps_the_output_exactly_when_every_residual_branch_is_zero(arch, kwargs, shape):
    model = _model(arch, kwargs, shape)
    for block in depth.removable_blocks(model).values():
        _zero_branch(block)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        expected = model(x)
        depth.remove_blocks(model, list(depth.removable_blocks(model)))
        assert depth.removable_blocks(model) == {}
        # F(x) == 0 makes each block exactly its shortcut, so the shortened model must agree bit for bit
        assert torch.equal(model(x), expected)


def test_remove_blocks_matches_the_network_computed_by_hand_when_an_identity_block_is_removed():
    model = _model(*RESNET)
    original = copy.deepcopy(model)
    x = torch.randn(4, 1, 8, 8)
    depth.remove_blocks(model, ["layers.1"])
    with torch.no_grad():
        h = original.stem(x)
        for i, block in enumerate(original.layers):
            if i != 1:  # the network without layers.1, no ReLU in its place: the stem already ended in one
                h = block(h)
        by_hand = original.classifier(torch.flatten(original.pool(h), 1))
        assert torch.equal(model(x), by_hand)


@pytest.mark.parametrize("criterion", ["loss_change", "norm"])
def test_block_scores_leaves_the_model_unchanged_when_scoring(trained_resnet, digits, criterion):
    model = copy.deepcopy(trained_resnet)
    x, y = digits
    with torch.no_grad():
        expected = model(x)
    model.train()  # a forward in train mode would update BatchNorm statistics: scoring must not leave it there
    state = {k: v.clone() for k, v in model.state_dict().items()}
    text = str(model)
    scores = depth.block_scores(model, x, y, criterion)
    assert list(scores) == [f"layers.{i}" for i in range(6)]
    assert all(m.training for m in model.modules())
    assert str(model) == text
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    with torch.no_grad():
        assert torch.equal(model.eval()(x), expected)


def test_block_scores_gives_zero_when_the_residual_branch_is_zeroed(trained_resnet, digits):
    intact = depth.block_scores(trained_resnet, *digits, "loss_change")
    # after 3 epochs every block matters: removing any one raises the cross-entropy (0.3 to 1.0 nats measured here)
    assert all(v > 0.05 for v in intact.values()), intact
    model = copy.deepcopy(trained_resnet)
    _zero_branch(model.layers[1])  # identity shortcut
    _zero_branch(model.layers[2])  # downsampling shortcut
    loss = depth.block_scores(model, *digits, "loss_change")
    norm = depth.block_scores(model, *digits, "norm")
    for name in ("layers.1", "layers.2"):
        assert abs(loss[name]) < 1e-6 and norm[name] == 0.0, (loss, norm)
    for name in ("layers.0", "layers.3", "layers.4", "layers.5"):  # branches still intact: F(x) is far from 0
        assert norm[name] > 0.1, norm


def test_block_scores_rejects_the_criterion_when_it_is_unknown(digits):
    with pytest.raises(ValueError, match=r"unknown depth criterion 'taylor' \(valid: loss_change, norm\)"):
        depth.block_scores(_model(*RESNET), *digits, "taylor")


@pytest.mark.parametrize("criterion", ["loss_change", "norm"])
def test_prune_depth_removes_the_lowest_scores_and_replays_on_a_fresh_model_when_given_the_names(
        trained_resnet, digits, criterion):
    model = copy.deepcopy(trained_resnet)
    scores = depth.block_scores(model, *digits, criterion)
    names = depth.prune_depth(model, *digits, n_blocks=2, criterion=criterion)
    assert names == sorted(scores, key=scores.get)[:2]
    assert len(depth.removable_blocks(model)) == 4

    fresh = build_model(*RESNET[:2], RESNET[2], 10)
    depth.remove_blocks(fresh, names)
    assert str(fresh) == str(model)
    fresh.load_state_dict(model.state_dict(), strict=True)
    x = digits[0][:8]
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_prune_depth_leaves_a_model_torch_pruning_can_prune_when_combined_with_channel_pruning(trained_resnet, digits):
    model = copy.deepcopy(trained_resnet)
    shape = RESNET[2]
    dense_macs, _ = surgery.count_macs(model, shape)
    names = depth.prune_depth(model, *digits, n_blocks=3)
    depth_macs, _ = surgery.count_macs(model, shape)
    pruner = surgery.build_pruner(model, shape, make_importance("l2"), ratio=0.5, scope="uniform", iterative_steps=1,
                                  round_to=None, max_layer_ratio=0.9, ignored=surgery.ignored_modules(model, []))
    surgery.prune_step(pruner, model)
    macs, _ = surgery.count_macs(model, shape)
    assert dense_macs > depth_macs > macs
    assert model.classifier.in_features == 8  # the last stage's 16 channels halved, through the kept shortcuts too
    x = digits[0][:8]
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (8, 10) and torch.isfinite(out).all()

    # What a loader does: depth names first, then torch-pruning's history, then the weights, strictly
    fresh = build_model(*RESNET[:2], shape, 10)
    depth.remove_blocks(fresh, names)
    dg = tp.DependencyGraph().build_dependency(fresh, surgery.example_input(shape))
    dg.load_pruning_history(pruner.pruning_history())
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), out)


def test_remove_blocks_names_the_removable_blocks_and_changes_nothing_when_a_name_is_bad():
    model = _model(*RESNET)
    text = str(model)
    with pytest.raises(ValueError, match=r"cannot remove 'layers.9': no module named; removable blocks: layers.0, "):
        depth.remove_blocks(model, ["layers.0", "layers.9"])
    with pytest.raises(ValueError, match=r"'stem': not a removable residual block \(Sequential\)"):
        depth.remove_blocks(model, ["stem"])
    with pytest.raises(ValueError, match="'layers.0': repeated block"):
        depth.remove_blocks(model, ["layers.0", "layers.0"])
    with pytest.raises(ValueError, match=r"'features.2': not a removable residual block \(InvertedResidual\)"):
        depth.remove_blocks(_model(*MOBILENET), ["features.2"])
    assert str(model) == text  # names are all checked before anything is replaced


def test_prune_depth_rejects_n_blocks_when_it_exceeds_the_removable_blocks(digits):
    model = _model(*MOBILENET)
    with pytest.raises(ValueError, match=r"cannot remove 4 blocks: the model has 3 removable .*choose 0..3"):
        depth.prune_depth(model, *digits, n_blocks=4)
    with pytest.raises(ValueError, match="cannot remove -1 blocks"):
        depth.prune_depth(model, *digits, n_blocks=-1)
    assert depth.prune_depth(model, *digits, n_blocks=0) == []
