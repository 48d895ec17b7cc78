"""Pixel likelihoods of EfficientMORL, with a global fixed σ = exp(log_scale).

Both return the negative log-likelihood per image, summed over channels and pixels, in nats, *without*
the −½·log 2π constant (as the original; the GECO targets assume this convention). Inputs x are in [0, 1].

- Gaussian: x ~ N(Σ_k m_k·μ_k, σ²), the mask-weighted mean of the K components.
- GMM: x ~ Σ_k m_k·N(μ_k, σ²) per pixel and channel (log-sum-exp over slots).
"""

from __future__ import annotations

import torch


def _log_var(log_scale: float, like: torch.Tensor) -> torch.Tensor:
    # log σ² as a 0-d tensor in the data's precision (the original keeps it as a float32 tensor)
    return torch.tensor(2.0 * log_scale, dtype=like.dtype, device=like.device)


def gaussian_nll(x: torch.Tensor, x_mean: torch.Tensor, log_scale: float) -> torch.Tensor:
    """x, x_mean: [B, C, H, W] → NLL [B]."""
    log_var = _log_var(log_scale, x)
    log_p = -0.5 * log_var - 0.5 * ((x - x_mean).pow(2) / log_var.exp())  # [B, C, H, W]
    return -log_p.sum(dim=(1, 2, 3))  # [B]


def gmm_nll(x: torch.Tensor, x_loc: torch.Tensor, mask_logprobs: torch.Tensor, log_scale: float) -> torch.Tensor:
    """x [B, C, H, W], component means x_loc [B, K, C, H, W], log masks [B, K, 1, H, W] → NLL [B]."""
    log_var = _log_var(log_scale, x)
    log_normal = -0.5 * log_var - 0.5 * ((x.unsqueeze(1) - x_loc).pow(2) / log_var.exp())  # [B, K, C, H, W]
    log_p = torch.logsumexp(mask_logprobs + log_normal, dim=1)  # [B, C, H, W]
    return -log_p.sum(dim=(1, 2, 3))  # [B]


def image_nll(
    kind: str, x: torch.Tensor, x_loc: torch.Tensor, mask_logprobs: torch.Tensor, log_scale: float
) -> torch.Tensor:
    """The configured likelihood ('gaussian' or 'gmm') of x [B, C, H, W] under the K components → [B]."""
    if kind == "gaussian":
        return gaussian_nll(x, (x_loc * mask_logprobs.exp()).sum(dim=1), log_scale)
    if kind == "gmm":
        return gmm_nll(x, x_loc, mask_logprobs, log_scale)
    raise ValueError(f"unknown image likelihood {kind!r}; expected 'gaussian' or 'gmm'")
