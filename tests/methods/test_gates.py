"""Complexity-aware training's gates: the ARM estimator is unbiased (against the exact expectation over every gate
configuration), the expected complexity is exact, and gating a unit to zero is the same network without it."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch_pruning as tp
from torch import nn

from pruning import dependency, estimators, gates
from pruning.counting import count_macs, example_input

SHAPE = (2, 12)


class Tiny(nn.Module):
    """A stem, one residual block (an internal group and the stage group), a depthwise conv, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(2, 2, 3, padding=1, bias=False), nn.BatchNorm1d(2), nn.ReLU())
        self.body = nn.Sequential(nn.Conv1d(2, 2, 3, padding=1, bias=False), nn.BatchNorm1d(2), nn.ReLU(),
                                  nn.Conv1d(2, 2, 1, bias=False), nn.BatchNorm1d(2))
        self.dw = nn.Conv1d(2, 2, 3, padding=1, groups=2)
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.head(self.dw(x).mean(-1))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(3)
    model = Tiny()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so gates after BatchNorm matter
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    model.eval()  # per-sample losses independent of the batch: the expectation is over the gates only
    g = gates.build(model, SHAPE, dependency.ignored_modules(model, []))
    g.attach(model)
    return model, g


def _configs(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))


def _exact_gradient(model, g, x, y, theta, logits=False):
    """∂E_ξ[L]/∂θ (or ∂/∂φ, φ = logit θ) exactly, over all 2^G gate configurations of one sample."""
    configs = _configs(g.size)
    with torch.no_grad():
        g.set(configs)
        losses = nn.functional.cross_entropy(model(x.expand(len(configs), *SHAPE)), y.expand(len(configs)),
                                             reduction="none")
        g.set(None)
    param = (torch.logit(theta) if logits else theta).clone().requires_grad_(True)
    t = torch.sigmoid(param) if logits else param
    prob = (configs * t + (1 - configs) * (1 - t)).prod(1)
    (grad,) = torch.autograd.grad((prob * losses).sum(), param)
    return grad


def test_tiny_net_has_unit_gates_per_group_and_a_block_gate(tiny):
    _, g = tiny
    assert [b.name for b in g.blocks] == ["body"]
    # the block's inner channels, and the stage's (the depthwise conv's channels are its producer's: one group)
    assert sorted(grp.size for grp in g.groups) == [2, 2]
    assert any("dw" in p for grp in g.groups for p in grp.points)
    assert g.size == 5


def test_arm_estimate_is_unbiased_against_the_exact_expectation(tiny):
    model, g = tiny
    torch.manual_seed(0)
    x, y = torch.randn(1, *SHAPE), torch.tensor([1])
    theta = torch.sigmoid(torch.tensor([1.2, -0.4, 0.3, -1.5, 0.8]))  # a spread of θ in (0.18, 0.77)
    exact = _exact_gradient(model, g, x, y, theta, logits=True)  # all 2^5 gate configurations
    assert exact.abs().max() > 0.02  # the gates matter: a test against zero could not fail
    # ARM over many independent draws (one sample, per-draw gates)
    n = 200_000
    gen = torch.Generator().manual_seed(1)
    u, z1, z2 = estimators.arm_pair(theta, n, gen)
    with torch.no_grad():
        xs, ys = x.expand(n, *SHAPE), y.expand(n)
        g.set(z1)
        l1 = nn.functional.cross_entropy(model(xs), ys, reduction="none")
        g.set(z2)
        l2 = nn.functional.cross_entropy(model(xs), ys, reduction="none")
        g.set(None)
    per_draw = (l1 - l2).unsqueeze(1) * (u - 0.5)
    estimate = estimators.arm_grad(l1, l2, u)
    se = per_draw.std(0) / n ** 0.5
    assert torch.all((estimate - exact).abs() <= 4 * se + 1e-6), (estimate, exact, se)
    # and it is not a lucky tolerance: the standard errors are far below the gradients' size
    assert se.max() < 0.2 * exact.abs().max()
    # in θ: E[L | ξ_k = 1] - E[L | ξ_k = 0], what the projected SGD step on θ uses
    exact_theta = _exact_gradient(model, g, x, y, theta)
    slope = theta * (1 - theta)
    assert torch.all((estimators.theta_grad(l1, l2, u, theta) - exact_theta).abs() <= 4 * se / slope + 1e-6)
    assert torch.equal(estimators.theta_grad(l1, l2, u, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])), torch.zeros(5))


def test_relaxed_estimate_is_unbiased_against_the_exact_expectation(tiny):
    model, g = tiny
    torch.manual_seed(0)
    x, y = torch.randn(1, *SHAPE), torch.tensor([2])
    theta = torch.sigmoid(torch.tensor([1.2, -0.4, 0.3, -1.5, 0.8]))
    exact = _exact_gradient(model, g, x, y, theta)  # E[L | ξ_k = 1] - E[L | ξ_k = 0]
    assert exact.abs().max() > 0.02
    n = 100_000
    is_block = torch.zeros(g.size, dtype=torch.bool)
    is_block[[b.index for b in g.blocks]] = True
    xi, k, weight = estimators.relaxed_draw(theta, n, torch.ones(g.size, dtype=torch.bool), is_block,
                                       torch.Generator().manual_seed(2))
    assert set(k.tolist()) == set(range(g.size))  # every gate, the block's included, gets relaxed samples
    xi.requires_grad_(True)
    g.set(xi)
    loss = nn.functional.cross_entropy(model(x.expand(n, *SHAPE)), y.expand(n))
    g.set(None)
    (grad,) = torch.autograd.grad(loss, xi)
    estimate = estimators.relaxed_grad(grad, k, weight, g.size)
    per_sample = torch.zeros(n, g.size)
    per_sample[torch.arange(n), k] = grad[torch.arange(n), k] * n * weight
    se = per_sample.std(0) * n ** 0.5  # a sum of n independent terms
    assert torch.allclose(estimate, per_sample.sum(0))
    assert torch.all((estimate - exact).abs() <= 4 * se + 1e-6), (estimate, exact, se)
    assert se.max() < 0.2 * exact.abs().max()


def test_expected_complexity_is_the_exact_mean_over_gate_configurations(tiny):
    _, g = tiny
    theta = torch.sigmoid(torch.tensor([0.5, -1.0, 2.0, -0.3, 0.7]))
    configs = _configs(g.size)
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
