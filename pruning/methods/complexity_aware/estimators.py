"""Unbiased estimators of ∂E_ξ[L]/∂θ for the Bernoulli gates of :mod:`.bernoulli`, ξ ~ Bernoulli(θ) per sample.

Two estimators of ∂E_ξ[L]/∂θ_k = E[L | ξ_k=1] − E[L | ξ_k=0], both unbiased
(tests/methods/complexity_aware/test_estimators.py checks them against the exact expectation over every gate
configuration); Guenter & Sideris's own is not known to us:

- ``relaxed`` (default; :func:`relaxed_draw`, :func:`relaxed_grad`): every other gate is a Bernoulli draw and ONE gate
  per sample, k, is set to t ~ U(0, 1); then ∂L/∂ξ_k at ξ_k = t is an unbiased estimate of the difference, because
  L(ξ_k=1) − L(ξ_k=0) = ∫₀¹ ∂L/∂ξ_k dt with the other gates held (the fundamental theorem of calculus along one
  coordinate). k is drawn per sample, half of the samples among block gates and half among unit gates, each estimate
  weighted by 1/(N p_k). One forward and one backward pass, the backward the weights need anyway; on the benchmark
  net its per-step standard deviation was ~4x below ARM's. The weights' gradient comes from the same pass, with one
  gate per sample at t instead of 0/1.
- ``arm`` (:func:`arm_pair`, :func:`arm_grad`, :func:`theta_grad`): ARM (Yin & Zhou 2019, "ARM: Augment-REINFORCE-
  Merge gradient for stochastic binary networks"), unbiased for ∂E_ξ[L]/∂φ (φ = logit θ) with two forward passes that
  share one uniform draw u: ξ¹ = 1[u > 1 − θ], ξ² = 1[u < θ], ĝ = (L(ξ¹) − L(ξ²)) (u − ½); :func:`theta_grad` divides
  by dθ/dφ = θ(1 − θ) (exactly 0 at θ ∈ {0, 1}, where ξ is not random). Both ξ¹ and ξ² are Bernoulli(θ), so the
  weights' gradient of either pass is unbiased too; the pair differs only where a gate is undecided.
"""

from __future__ import annotations

import torch


def arm_grad(losses_1: torch.Tensor, losses_2: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """ARM estimate of ∂E[L]/∂φ from per-sample losses under ξ¹ = 1[u > 1 − θ] and ξ² = 1[u < θ] (u: [N, G])."""
    return ((losses_1 - losses_2).detach().unsqueeze(1) * (u - 0.5)).mean(0)


def theta_grad(losses_1: torch.Tensor, losses_2: torch.Tensor, u: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """ARM estimate of ∂E[L]/∂θ: :func:`arm_grad` / θ(1 − θ), 0 where θ is 0 or 1 (no randomness to learn from)."""
    slope = theta * (1 - theta)
    return torch.where(slope > 0, arm_grad(losses_1, losses_2, u) / slope.clamp_min(1e-12), torch.zeros_like(theta))


def relaxed_draw(theta: torch.Tensor, n: int, learnable: torch.Tensor, is_block: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ξ [n, G] with one gate per sample at t ~ U(0, 1), that gate k [n], its weight 1/(n p_k) [n]).

    ``learnable`` gates may be the relaxed one: drawn among block gates for half of the samples and among unit gates
    for the other half (all from one kind when the other has none).
    """
    xi = torch.bernoulli(theta.expand(n, -1), generator=generator)
    pools = [torch.nonzero(learnable & is_block).flatten(), torch.nonzero(learnable & ~is_block).flatten()]
    pools = [p for p in pools if len(p)]
    if not pools:
        return xi, torch.zeros(0, dtype=torch.long), torch.zeros(0)
    kind = torch.randint(len(pools), (n,), generator=generator)
    k, weight = torch.empty(n, dtype=torch.long), torch.empty(n)
    for j, pool in enumerate(pools):
        rows = torch.nonzero(kind == j).flatten()
        k[rows] = pool[torch.randint(len(pool), (len(rows),), generator=generator)]
        weight[rows] = len(pools) * len(pool) / n  # 1 / (n p_k), p_k = 1/len(pools) * 1/len(pool)
    xi[torch.arange(n), k] = torch.rand(n, generator=generator)
    return xi, k, weight


def relaxed_grad(xi_grad: torch.Tensor, k: torch.Tensor, weight: torch.Tensor, n_gates: int) -> torch.Tensor:
    """∂E[L]/∂θ from ``xi_grad`` = ∂(mean over the batch of L)/∂ξ at :func:`relaxed_draw`'s ξ."""
    n = xi_grad.shape[0]
    per_sample = xi_grad[torch.arange(len(k)), k] * n  # ∂L_i/∂ξ_(i, k_i)
    return torch.zeros(n_gates).index_add_(0, k, per_sample * weight)


def arm_pair(theta: torch.Tensor, n: int, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u, ξ¹, ξ²) for ``n`` samples."""
    u = torch.rand(n, theta.numel(), generator=generator)
    return u, (u > 1 - theta).float(), (u < theta).float()
