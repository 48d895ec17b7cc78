"""Diagonal Gaussians over slot latents, parameterised as the original does.

A posterior or prior is given by λ = [μ, s] (each [N, D]): the mean μ and a "softplus parameter" s whose
standard deviation is σ = sqrt(softplus(min(s, 80)) + 1e-5). Sampling is reparameterised
(z = μ + σ·ε) and the noise ε can come from a caller's function, so tests and the training loop can
control it (see `NoiseFn`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch

# A function returning standard-normal noise of the requested shape; shape[0] is images·K (the rows of
# one image are contiguous). `None` means torch.randn on the global generator.
NoiseFn = Callable[[Sequence[int]], torch.Tensor]

SOFTPLUS_CAP = 80.0
STD_EPS = 1e-5


def softplus_to_std(softplus: torch.Tensor) -> torch.Tensor:
    """σ = sqrt(log(1 + exp(min(s, 80))) + 1e-5), computed literally like the original (not log1p)."""
    capped = torch.clamp(softplus, max=SOFTPLUS_CAP)
    return torch.sqrt(torch.log(1.0 + torch.exp(capped)) + STD_EPS)


def standard_normal(shape: Sequence[int], like: torch.Tensor, noise: Optional[NoiseFn] = None) -> torch.Tensor:
    """ε ~ N(0, I) of `shape` on `like`'s device and dtype, from `noise` when given."""
    if noise is None:
        return torch.randn(tuple(shape), device=like.device, dtype=like.dtype)
    eps = noise(tuple(shape))
    if tuple(eps.shape) != tuple(shape):
        raise ValueError(f"noise function returned shape {tuple(eps.shape)}, expected {tuple(shape)}")
    return eps.to(device=like.device, dtype=like.dtype)


@dataclass
class DiagonalGaussian:
    """N(loc, diag(std²)) over the last dimension. loc, std: [N, D]."""

    loc: torch.Tensor
    std: torch.Tensor

    @classmethod
    def from_params(cls, lamda: torch.Tensor) -> DiagonalGaussian:
        """From λ = [μ, s] of shape [N, 2D]."""
        loc, softplus = lamda.chunk(2, dim=-1)  # [N, D] each
        return cls(loc, softplus_to_std(softplus))

    @classmethod
    def from_loc_softplus(cls, loc: torch.Tensor, softplus: torch.Tensor) -> DiagonalGaussian:
        return cls(loc, softplus_to_std(softplus))

    @classmethod
    def standard(cls, like: torch.Tensor) -> DiagonalGaussian:
        """N(0, I) with `like`'s shape, device and dtype."""
        return cls(torch.zeros_like(like), torch.ones_like(like))

    def rsample(self, noise: Optional[NoiseFn] = None) -> torch.Tensor:
        """z = μ + σ·ε with a fresh ε, differentiable in μ and σ. [N, D]"""
        return self.reparameterize(standard_normal(self.loc.shape, self.loc, noise))

    def reparameterize(self, eps: torch.Tensor) -> torch.Tensor:
        """z = μ + σ·ε for a given standard-normal ε [N, D] (a draw the caller keeps). [N, D]"""
        return self.loc + self.std * eps


def gaussian_kl(q: DiagonalGaussian, p: DiagonalGaussian) -> torch.Tensor:
    """KL(q ‖ p) summed over the latent dimension: [N, D] → [N].

    Same formula as torch.distributions (Normal ‖ Normal):
    ½·(r + ((μq − μp)/σp)² − 1 − log r) with r = (σq/σp)².
    """
    # in float32 even under mixed precision (a no-op in fp32)
    q_loc, q_std, p_loc, p_std = (t.float() for t in (q.loc, q.std, p.loc, p.std))
    var_ratio = (q_std / p_std).pow(2)  # [N, D]
    mean_term = ((q_loc - p_loc) / p_std).pow(2)  # [N, D]
    return (0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log())).sum(-1)  # [N]
