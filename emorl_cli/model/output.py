"""What the models return. Shapes: B images, K slots, D latent size, C×H×W image, I refinement steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch


@dataclass
class StageRecord:
    """One stage of inference, kept when `forward(..., record=True)` (for `emorl viz`).

    kind: 'layer' (EfficientMORL bottom-up layer l, or a Slot Attention iteration), 'refinement'
    (after refinement step i ≥ 1) or 'initial' (EfficientMORL with L = 0: the decoded prior sample).
    """

    kind: Literal["layer", "refinement", "initial"]
    index: int
    means: torch.Tensor  # [B, K, C, H, W] component means in [0, 1]
    masks: torch.Tensor  # [B, K, 1, H, W] mask probabilities
    attention: Optional[torch.Tensor] = None  # [B, K, 1, H, W] softmax over slots (+1e-8); None for refinement


@dataclass
class ModelOutput:
    """Result of one forward pass (tensors of the final stage unless said otherwise).

    loss: scalar to minimise — EfficientMORL: Σ_{i=0..I} (I+3−i)/(I+1) · mean_b ℓ_{i,b} (the original's
        weights, not the paper's Eq. 8; ℓ from the `Objective`); Slot Attention: mean over images of the
        summed squared error.
    loss_per_image: [B], the same before the batch mean (equal values: loss == loss_per_image.mean()).
        Train with `loss`: in training mode the decoder-weight gradients of the stages before the last
        are attached to `loss` only (see model/grad_reuse.py).
    nll, kl: [B] final NLL (nats, summed over pixels and channels) and final KL (summed over slots);
        None for Slot Attention.
    mse: [B] mean squared error of `reconstruction` against the image in [0, 1].
    means [B, K, C, H, W], masks [B, K, 1, H, W] (probabilities), mask_logprobs [B, K, 1, H, W],
    reconstruction [B, C, H, W] = Σ_k masks·means.
    posterior_loc: [B, K, D] final posterior means μ (Slot Attention: the slots) — codes for DCI.
    posterior_softplus, posterior_scale: [B, K, D] the softplus parameter s and σ (None for Slot Attention).
    samples: [B, K, D] the latent sample z that produced `means`/`masks`.
    deltas: [I] mean over slots of ‖Δλ‖₂ per refinement step (detached; empty when I = 0).
    trace: per-stage records when record=True (L layers, then I refinement steps), else None.
    """

    loss: torch.Tensor
    loss_per_image: torch.Tensor
    nll: Optional[torch.Tensor]
    kl: Optional[torch.Tensor]
    mse: torch.Tensor
    means: torch.Tensor
    masks: torch.Tensor
    mask_logprobs: torch.Tensor
    reconstruction: torch.Tensor
    posterior_loc: torch.Tensor
    posterior_softplus: Optional[torch.Tensor]
    posterior_scale: Optional[torch.Tensor]
    samples: torch.Tensor
    deltas: torch.Tensor
    refinement_iters: int = 0
    trace: Optional[list[StageRecord]] = field(default=None)
