"""Complexity-aware training's θ-gradient estimators (ARM and relaxed) are unbiased: checked against the exact
expectation over every gate configuration of the tiny net."""

from __future__ import annotations

import torch
from torch import nn

from pruning.methods.complexity_aware import estimators
from tests.methods.complexity_aware.conftest import SHAPE, all_configurations


def _exact_gradient(model, g, x, y, theta, logits=False):
    """∂E_ξ[L]/∂θ (or ∂/∂φ, φ = logit θ) exactly, over all 2^G gate configurations of one sample."""
    configs = all_configurations(g.size)
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
