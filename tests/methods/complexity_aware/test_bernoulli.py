"""Complexity-aware training's Bernoulli gates: one per unit of a torch-pruning group and per residual block, the
expected complexity is exact, and gating a unit to zero is the same network without it."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from pruning.counting import count_macs, example_input
from tests.methods.complexity_aware.conftest import SHAPE, all_configurations


def test_tiny_net_has_unit_gates_per_group_and_a_block_gate(tiny):
    _, g = tiny
    assert [b.name for b in g.blocks] == ["body"]
    # the block's inner channels, and the stage's (the depthwise conv's channels are its producer's: one group)
    assert sorted(grp.size for grp in g.groups) == [2, 2]
    assert any("dw" in p for grp in g.groups for p in grp.points)
    assert g.size == 5



def test_expected_complexity_is_the_exact_mean_over_gate_configurations(tiny):
    _, g = tiny
    theta = torch.sigmoid(torch.tensor([0.5, -1.0, 2.0, -0.3, 0.7]))
    configs = all_configurations(g.size)
    prob = (configs * theta + (1 - configs) * (1 - theta)).prod(1)
    per_config = torch.stack([torch.stack(g.expected(c)) for c in configs])
    exact = (prob[:, None] * per_config).sum(0)
    assert torch.allclose(torch.stack(g.expected(theta)), exact, rtol=1e-5)  # the depthwise θ-not-θ² term included


def test_all_gates_on_costs_what_torch_pruning_counts(tiny):
    model, g = tiny
    macs, params = g.expected(torch.ones(g.size))
    length = SHAPE[1]  # every conv keeps the length; the head sees one vector
    layers = [m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Linear)]
    assert float(macs) == sum(m.weight.numel() * (length if isinstance(m, nn.Conv1d) else 1) for m in layers)
    assert float(params) == count_macs(model, SHAPE)[1]  # every parameter: weights, biases, BatchNorm's two


def test_a_unit_gated_to_zero_is_the_network_without_it(tiny):
    import copy

    model, g = tiny
    x = torch.randn(5, *SHAPE)
    stage = next(grp for grp in g.groups if "body.4" in grp.points)  # the stage's channels (the add's)
    xi = torch.ones(g.size)
    xi[stage.offset + 1] = 0.0
    with torch.no_grad():
        g.set(xi)
        gated = model(x)
        g.set(None)
    g.detach()
    try:
        pruned = copy.deepcopy(model)
        dg = tp.DependencyGraph().build_dependency(pruned, example_input(SHAPE))
        root = dict(pruned.named_modules())[stage.name]
        dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, [1]).prune()
        with torch.no_grad():
            assert torch.allclose(pruned(x), gated, atol=1e-5)
        assert count_macs(pruned, SHAPE)[0] < count_macs(model, SHAPE)[0]
    finally:
        g.attach(model)
