"""Which latent dimensions a model uses: activeness scores, latent ranges and traversal latents.

Shape legend: N images, B a batch of images, K slots, D latent size, T traversal steps, C×H×W an image.

Two activeness scores:
- `traversal_activeness` (the original's `activeness` mode): for one slot of each image, sweep one latent
  dimension over its range in T steps, decode, and take the pixel variance of the T rendered images
  (unbiased, over the steps), averaged over pixels and channels. Needs a decoder (`render`).
- `posterior_mean_variance`: the variance over images of each slot's posterior mean, per dimension —
  no decoder needed; a dimension the encoder ignores has (near) zero variance.
`top_k_active_dims` ranks dimensions by either score. Latent ranges (per-dimension min/max over a dataset
pass, all slots pooled, as the original's `disentanglement_preprocessing`) bound the traversals.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from emorl_cli.errors import EmorlError

__all__ = [
    "LatentRanges",
    "latent_ranges",
    "update_latent_ranges",
    "traversal_values",
    "traversal_latents",
    "traversal_activeness",
    "posterior_mean_variance",
    "top_k_active_dims",
]

LatentRanges = tuple[torch.Tensor, torch.Tensor]  # (mins [D], maxs [D])


def latent_ranges(z: torch.Tensor) -> LatentRanges:
    """Per-dimension min and max of latents [..., D] (every leading axis pooled: images and slots)."""
    flat = z.detach().reshape(-1, z.shape[-1])  # [N*K, D]
    if flat.shape[0] == 0:
        raise EmorlError("no latents to take ranges from; evaluate at least one image")
    return flat.amin(dim=0), flat.amax(dim=0)


def update_latent_ranges(current: LatentRanges | None, z: torch.Tensor) -> LatentRanges:
    """Fold a batch of latents [..., D] into running ranges (None starts them)."""
    mins, maxs = latent_ranges(z)
    if current is None:
        return mins, maxs
    return torch.minimum(current[0], mins.to(current[0])), torch.maximum(current[1], maxs.to(current[1]))


def traversal_values(ranges: LatentRanges, steps: int) -> torch.Tensor:
    """[D, T] evenly spaced values from each dimension's min to its max."""
    if steps < 2:
        raise EmorlError(f"a traversal needs at least 2 steps, got {steps}")
    mins, maxs = ranges
    t = torch.linspace(0, 1, steps, dtype=mins.dtype, device=mins.device)  # [T]
    return mins[:, None] + (maxs - mins)[:, None] * t[None, :]  # [D,T]


def traversal_latents(z: torch.Tensor, slots: torch.Tensor | int, dim: int, values: torch.Tensor) -> torch.Tensor:
    """Copies of z with dimension `dim` of one slot per image set to each value.

    Args:
        z: [B,K,D] latents.
        slots: the slot to change in each image ([B] or one int for all).
        dim: the latent dimension to sweep.
        values: [T] values.
    Returns:
        [B,T,K,D]: entry [b,t] is z[b] with z[b, slots[b], dim] = values[t].
    """
    batch, _, _ = z.shape
    steps = values.shape[0]
    slots = torch.as_tensor(slots, device=z.device).expand(batch)  # [B]
    out = z.detach().unsqueeze(1).repeat(1, steps, 1, 1)  # [B,T,K,D]
    rows = torch.arange(batch, device=z.device)
    out[rows, :, slots, dim] = values.to(z).unsqueeze(0).expand(batch, steps)
    return out


@torch.no_grad()
def traversal_activeness(
    render: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    ranges: LatentRanges,
    slots: torch.Tensor | int,
    steps: int = 6,
) -> torch.Tensor:
    """The original's activeness: mean pixel variance of decoded images while one dimension sweeps its range.

    Args:
        render: latents [B',K,D] → images [B',C,H,W] (decode every slot and composite them).
        z: [B,K,D] latents of B images (the original used posterior samples).
        ranges: (mins [D], maxs [D]) from `latent_ranges`.
        slots: which slot to sweep in each image ([B] or one int); the original drew one at random.
        steps: T values per sweep (the original: 6).
    Returns:
        [B,D] activeness of each dimension in each image.
    """
    batch, k, d = z.shape
    values = traversal_values(ranges, steps)  # [D,T]
    scores = []
    for j in range(d):
        latents = traversal_latents(z, slots, j, values[j])  # [B,T,K,D]
        images = render(latents.reshape(batch * steps, k, d))  # [B*T,C,H,W]
        images = images.reshape(batch, steps, *images.shape[1:])  # [B,T,C,H,W]
        scores.append(images.var(dim=1).flatten(1).mean(dim=1))  # [B]
    return torch.stack(scores, dim=1)  # [B,D]


def posterior_mean_variance(codes: torch.Tensor) -> torch.Tensor:
    """Variance over images (unbiased) of posterior means [N,K,D] → [K,D]; needs N ≥ 2."""
    if codes.dim() != 3 or codes.shape[0] < 2:
        raise EmorlError(f"posterior means must be [N,K,D] with N ≥ 2 images, got {list(codes.shape)}")
    return codes.detach().var(dim=0)


def top_k_active_dims(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k most active dimensions, most active first.

    Args:
        scores: [..., D] activeness; leading axes (images, slots) are averaged first, as the original did.
        k: how many (capped at D).
    """
    per_dim = scores.detach().reshape(-1, scores.shape[-1]).mean(dim=0)  # [D]
    return torch.argsort(per_dim, descending=True, stable=True)[: min(k, per_dim.numel())]
