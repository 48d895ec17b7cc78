"""Latent passes over a model: latent ranges, per-dimension activeness, and the frames of latent traversals.

Shape legend: B images in a batch, K slots, D latent size, C×H×W an image, T frames.

The model contract is that of `emorl_cli.model`: `model(images, objective, refinement_iters=I)` →
`ModelOutput` (with `samples` [B,K,D]) and `model.decode(z [N,D]) → (rgb [N,3,H,W], mask_logits [N,H,W])`.
The scores themselves are the pure functions of `activeness.py`; `emorl gifs` draws the frames (viz/gifs.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch

from emorl_cli.errors import EmorlError
from emorl_cli.evaluate.activeness import (
    LatentRanges,
    top_k_active_dims,
    traversal_activeness,
    traversal_latents,
    traversal_values,
    update_latent_ranges,
)
from emorl_cli.evaluate.runner import model_device, take_images

__all__ = [
    "composite_renderer",
    "collect_latent_ranges",
    "latent_activeness",
    "Traversal",
    "Traversals",
    "latent_traversals",
]

Batch = Mapping[str, Any]


def composite_renderer(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """z [B,K,D] → images [B,C,H,W] in [0,1]: decode every slot, softmax the masks over slots, composite.

    Each distinct latent is decoded once: in a traversal only the swept slot changes, so the other K − 1
    slots of an image repeat in every frame (K× fewer decoder passes for activeness and GIFs).
    """

    def render(z: torch.Tensor) -> torch.Tensor:
        b, k, d = z.shape
        unique, inverse = torch.unique(z.reshape(b * k, d), dim=0, return_inverse=True)  # [U,D], [B*K]
        rgb, logits = model.decode(unique)  # [U,C,H,W], [U,H,W]
        rgb, logits = rgb[inverse], logits[inverse]  # [B*K,C,H,W], [B*K,H,W]
        rgb = rgb.reshape(b, k, *rgb.shape[1:])  # [B,K,C,H,W]
        masks = torch.softmax(logits.reshape(b, k, 1, *logits.shape[-2:]), dim=1)  # [B,K,1,H,W]
        return (masks * rgb).sum(dim=1)

    return render


def collect_latent_ranges(
    model: torch.nn.Module,
    objective: Any,
    batches: Iterable[Batch],
    *,
    refinement_iters: Optional[int] = None,
    num_images: int = 100,
) -> tuple[LatentRanges, list[torch.Tensor]]:
    """Per-dimension min/max of posterior samples over `num_images` images (all slots pooled, as the
    original's disentanglement_preprocessing).

    Returns: ((mins [D], maxs [D]), the samples [B,K,D] of each batch, for reuse).
    """
    device = model_device(model)
    ranges: Optional[LatentRanges] = None
    samples = []
    for batch in take_images(batches, num_images):
        with torch.no_grad():
            out = model(batch["imgs"].to(device), objective, refinement_iters=refinement_iters)
        ranges = update_latent_ranges(ranges, out.samples)
        samples.append(out.samples)
    if ranges is None:
        raise EmorlError("no images to estimate latent ranges from; check the split and num_images")
    return ranges, samples


def latent_activeness(
    model: torch.nn.Module,
    objective: Any,
    batches: Iterable[Batch],
    *,
    refinement_iters: Optional[int] = None,
    num_images: int = 100,
    steps: int = 6,
    seed: int = 0,
) -> tuple[LatentRanges, list[torch.Tensor], torch.Tensor]:
    """Latent ranges over `num_images` images, then the original's activeness of every latent dimension:
    sweep it over its range in `steps` steps in one randomly drawn (seeded) slot per image and average the
    pixel variance of the composited images.

    Returns: (ranges, the posterior samples [B,K,D] per batch, activeness [D]).
    """
    ranges, samples = collect_latent_ranges(
        model, objective, batches, refinement_iters=refinement_iters, num_images=num_images
    )
    render = composite_renderer(model)
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for z in samples:
        slots = torch.randint(z.shape[1], (z.shape[0],), generator=generator).to(z.device)
        scores.append(traversal_activeness(render, z, ranges, slots, steps=steps).cpu())
    return ranges, samples, torch.cat(scores).mean(dim=0)  # [D]


@dataclass
class Traversal:
    """Slot `slot` of the first image with its `rank`-th most active dimension `dim` swept over its range."""

    slot: int
    rank: int
    dim: int
    frames: torch.Tensor  # [T,C,H,W] in [0,1]

    @property
    def label(self) -> str:
        return f"slot {self.slot} · dim {self.dim}"


@dataclass
class Traversals:
    """Every traversal of one image, and the pass that chose the dimensions."""

    traversals: list[Traversal]  # slot-major: slot 0's ranks, then slot 1's, …
    dims: list[int]  # the top dimensions, most active first
    activeness: torch.Tensor  # [D] mean scores
    ranges: LatentRanges  # (mins [D], maxs [D])


def latent_traversals(
    model: torch.nn.Module,
    objective: Any,
    batches: Iterable[Batch],
    *,
    refinement_iters: Optional[int] = None,
    num_images: int = 100,
    top_k: int = 10,
    frames: int = 8,
    activeness_steps: int = 6,
    seed: int = 0,
) -> Traversals:
    """Latent traversals of the first image, as the original's make_gifs.

    1. latent ranges: min/max of posterior samples over `num_images` images;
    2. activeness: on the same images, sweep each dimension of one randomly drawn slot (seeded) over its
       range in `activeness_steps` steps and measure the pixel variance; rank dimensions by the mean;
    3. for each slot k of the first image and its r-th most active dimension (r < top_k), sweep that
       dimension of that slot over its range in `frames` steps (from the image's posterior sample).
    """
    ranges, samples, activeness = latent_activeness(
        model,
        objective,
        batches,
        refinement_iters=refinement_iters,
        num_images=num_images,
        steps=activeness_steps,
        seed=seed,
    )
    render = composite_renderer(model)
    dims = top_k_active_dims(activeness, top_k).tolist()
    values = traversal_values(ranges, frames)  # [D,T]
    z0 = samples[0][:1]  # [1,K,D]: the first image
    traversals = []
    with torch.no_grad():
        for slot in range(z0.shape[1]):
            for rank, dim in enumerate(dims):
                latents = traversal_latents(z0, slot, dim, values[dim])[0]  # [T,K,D]
                clip = render(latents).float().cpu().clamp(0, 1)  # [T,C,H,W]
                traversals.append(Traversal(slot=slot, rank=rank, dim=dim, frames=clip))
    return Traversals(traversals=traversals, dims=dims, activeness=activeness, ranges=ranges)
