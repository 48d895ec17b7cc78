"""Slot attention (Locatello et al. 2020) as used by both models: softmax over the K slots, then a
weighted mean over the H·W input tokens."""

from __future__ import annotations

import torch

ATTENTION_EPS = 1e-8


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = ATTENTION_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """One attention read.

    Args:
        q: [B, K, D] queries, already scaled by D^-½.
        k, v: [B, H·W, D] keys and values.
    Returns:
        updates [B, K, D]: per slot, the attention-weighted mean of the values;
        attn [B, K, H·W]: softmax over slots plus eps (what the original visualises), before the
        per-slot normalisation over pixels.
    """
    dots = torch.bmm(q, k.transpose(1, 2))  # [B, K, H*W]
    attn = dots.softmax(dim=1) + eps  # [B, K, H*W], competition between slots
    weights = attn / attn.sum(dim=-1, keepdim=True)  # [B, K, H*W], weighted mean over pixels
    return torch.bmm(weights, v), attn  # [B, K, D], [B, K, H*W]
