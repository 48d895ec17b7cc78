"""From a model and batches to files: per-stage figures with an index.html, and latent-traversal GIFs.

Shape legend: B images in a batch, K slots, D latent size, C×H×W an image, T frames.
The model contract is that of `emorl_cli.model`: `model(images, objective, refinement_iters=I, record=True)`
→ `ModelOutput` (with `trace`, `posterior_loc`, `samples`, `masks`, `mse`, `kl`, `nll`) and
`model.decode(z [N,D]) → (rgb [N,3,H,W], mask_logits [N,H,W])`. Batches are the data layer's dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
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
from emorl_cli.evaluate.ari import UpsampleMode, adjusted_rand_index
from emorl_cli.evaluate.runner import Progress, model_device, take_images
from emorl_cli.files import atomic_path, ensure_writable_folder
from emorl_cli.viz.figures import render_stage_figure, save_png
from emorl_cli.viz.gifs import traversal_gif_name, write_gif_sheet, write_traversal_gif
from emorl_cli.viz.html import write_index_html

__all__ = [
    "stage_name",
    "stages_of_image",
    "make_viz",
    "composite_renderer",
    "collect_latent_ranges",
    "latent_activeness",
    "make_gifs",
]

Batch = Mapping[str, Any]


def stage_name(record: Any) -> str:
    """Row title of a trace record: 'layer l' (1-based, bottom-up), 'refine i' or 'initial'."""
    if record.kind == "layer":
        return f"layer {record.index + 1}"
    if record.kind == "refinement":
        return f"refine {record.index}"
    return str(record.kind)


def stages_of_image(trace: list[Any], b: int) -> list[dict[str, Any]]:
    """Image b's rows of a stage figure from a model trace."""
    stages = []
    for record in trace:
        means = record.means[b].float().cpu()  # [K,C,H,W]
        masks = record.masks[b, :, 0].float().cpu()  # [K,H,W]
        attention = None if record.attention is None else record.attention[b, :, 0].float().cpu()
        stages.append(
            {
                "name": stage_name(record),
                "reconstruction": (means * masks[:, None]).sum(0),  # [C,H,W]
                "masks": masks,
                "means": means,
                "attention": attention,
            }
        )
    return stages


def _collect_arrays(arrays: dict[str, list[np.ndarray]], batch: Batch, trace: list[Any]) -> None:
    """Append one batch's images, indices, true masks and per-stage tensors to `arrays` (name → parts)."""
    parts = {"images": (batch["imgs"].float().cpu() + 1.0) / 2.0, "index": batch["index"]}
    if "masks" in batch:
        parts["true_masks"] = batch["masks"]
    for s, record in enumerate(trace):
        name = f"stage{s}_{record.kind}{record.index}"
        parts[f"{name}_means"] = record.means
        parts[f"{name}_masks"] = record.masks
        if record.attention is not None:
            parts[f"{name}_attention"] = record.attention
    for name, tensor in parts.items():
        arrays.setdefault(name, []).append(tensor.detach().cpu().numpy())


def make_viz(
    model: torch.nn.Module,
    objective: Any,
    batches: Iterable[Batch],
    out_dir: str | Path,
    *,
    refinement_iters: Optional[int] = None,
    num_images: int = 10,
    scale: Optional[int] = None,
    upsample_mode: UpsampleMode = "bicubic",
    embed_images: bool = False,
    progress: Progress = None,
) -> Path:
    """Write `image_{index}.png` (a row per inference stage) for each image, an index.html with metrics, and
    `viz.npz` with the arrays drawn (images, index, true masks, and per stage means/masks/attention).

    Per-image metrics: FG-ARI and ARI (when the batches carry masks), MSE, and KL and NLL when the model has
    them. Returns the path of index.html.
    """
    out_dir = ensure_writable_folder(out_dir, "output folder")  # before any image is inferred
    device = model_device(model)
    entries = []
    arrays: dict[str, list[np.ndarray]] = {}
    for batch in take_images(batches, num_images):
        images = batch["imgs"].to(device)
        with torch.no_grad():
            out = model(images, objective, refinement_iters=refinement_iters, record=True)
        if not out.trace:
            raise EmorlError("the model returned no inference trace; it must support record=True")
        _collect_arrays(arrays, batch, out.trace)
        masks = out.masks.float().cpu()
        fg = full = None
        if "masks" in batch:
            true = batch["masks"]
            mode = None if masks.shape[-2:] == true.shape[-2:] else upsample_mode
            fg = adjusted_rand_index(true, masks, foreground_only=True, upsample_mode=mode)
            full = adjusted_rand_index(true, masks, foreground_only=False, upsample_mode=mode)
        for b in range(images.shape[0]):
            index = int(batch["index"][b])
            picture = (images[b].float().cpu() + 1.0) / 2.0  # [C,H,W] in [0,1]
            figure = render_stage_figure(picture, stages_of_image(out.trace, b), scale=scale, title=f"#{index}")
            png = f"image_{index}.png"
            save_png(figure, out_dir / png)
            metrics: dict[str, Any] = {}
            if fg is not None:
                metrics.update({"FG-ARI": float(fg[b]), "ARI": float(full[b])})
            metrics["MSE"] = float(out.mse[b])
            if out.kl is not None:
                metrics["KL"] = float(out.kl[b])
            if out.nll is not None:
                metrics["NLL"] = float(out.nll[b])
            entries.append({"png": png, "title": f"test image {index}", "metrics": metrics})
        if progress is not None:
            progress(int(images.shape[0]))
    if not entries:
        raise EmorlError("no images to draw; check the split and num_images")
    with atomic_path(out_dir / "viz.npz") as tmp, tmp.open("wb") as handle:
        np.savez_compressed(handle, **{name: np.concatenate(parts) for name, parts in arrays.items()})
    return write_index_html(out_dir, entries, title="emorl: inference stages", embed_images=embed_images)


# ------------------------------------------------------------------------------------------------ GIFs


def composite_renderer(model: torch.nn.Module):
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


def make_gifs(
    model: torch.nn.Module,
    objective: Any,
    batches: Iterable[Batch],
    out_dir: str | Path,
    *,
    refinement_iters: Optional[int] = None,
    num_images: int = 100,
    top_k: int = 10,
    frames: int = 8,
    activeness_steps: int = 6,
    seed: int = 0,
    scale: Optional[int] = None,
    fps: float = 4,
) -> dict[str, Any]:
    """Latent-traversal GIFs of the first image, as the original's make_gifs.

    1. latent ranges: min/max of posterior samples over `num_images` images;
    2. activeness: on the same images, sweep each dimension of one randomly drawn slot (seeded) over its
       range in `activeness_steps` steps and measure the pixel variance; rank dimensions by the mean;
    3. for each slot k of the first image and its r-th most active dimension (r < top_k), sweep that
       dimension of that slot over its range in `frames` steps (from the image's posterior sample) and write
       `slot_{k}_row_{r}.gif`; all traversals also go on one sheet, `traversals.png`.

    Returns: {"gifs": [paths], "sheet": path, "dims": [top dims], "activeness": [D] mean scores,
    "ranges": ([D] mins, [D] maxs)}.
    """
    out_dir = ensure_writable_folder(out_dir, "output folder")  # before the minutes of inference
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
    k_slots = samples[0].shape[1]
    dims = top_k_active_dims(activeness, top_k).tolist()
    values = traversal_values(ranges, frames)  # [D,T]
    z0 = samples[0][:1]  # [1,K,D]: the first image
    gifs, rows, labels = [], [], []
    with torch.no_grad():
        for slot in range(k_slots):
            for r, dim in enumerate(dims):
                latents = traversal_latents(z0, slot, dim, values[dim])[0]  # [T,K,D]
                clip = render(latents).float().cpu().clamp(0, 1)  # [T,C,H,W]
                gifs.append(write_traversal_gif(clip, out_dir / traversal_gif_name(slot, r), fps=fps, scale=scale))
                rows.append(clip)
                labels.append(f"slot {slot} · dim {dim}")
    sheet = write_gif_sheet(rows, out_dir / "traversals.png", labels=labels, scale=scale)
    return {
        "gifs": gifs,
        "sheet": sheet,
        "dims": dims,
        "activeness": activeness.tolist(),
        "ranges": (ranges[0].cpu().tolist(), ranges[1].cpu().tolist()),
    }
