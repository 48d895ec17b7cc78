"""Batched evaluation of a model: per-image FG-ARI / ARI / MSE / KL, and the codes DCI needs.

Shape legend: B images in a batch, K slots, D latent size, O ground-truth entities, F factor columns,
M matched (slot, object) pairs.

Inputs are any iterable of batch dicts as the data layer yields them: `imgs` [B,3,H,W] in [-1,1],
`masks` [B,O,1,Hm,Wm] 0/255, `factors` [B,O,F] (DCI only), `index` [B]. The model is any module called as
`model(images, objective, refinement_iters=I)` returning a `ModelOutput` (see `emorl_cli.model`).
Inference runs under `torch.no_grad()`; the model itself turns gradients on for its refinement steps.
Single process: the caller shards and gathers when it runs on several.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from emorl_cli.errors import EmorlError
from emorl_cli.evaluate.ari import UpsampleMode, adjusted_rand_index, nan_summary
from emorl_cli.evaluate.dci import compute_dci, dataset_factors, target_factors, visibility_column
from emorl_cli.evaluate.matching import gather_matched, match_slots_to_objects

__all__ = [
    "METRICS",
    "take_images",
    "model_device",
    "image_metrics",
    "slot_spread",
    "evaluate_ari",
    "summarize_records",
    "decoded_masks",
    "CodeSet",
    "collect_codes",
    "evaluate_dci",
]

METRICS = ("fg_ari", "ari", "mse", "kl", "nll", "slot_spread")
Batch = Mapping[str, Any]
Progress = Optional[Callable[[int], None]]  # called with the number of images just finished


def take_images(batches: Iterable[Batch], num_images: Optional[int]) -> Iterator[dict[str, Any]]:
    """Yield batches until `num_images` images have been seen, trimming the last one (None: all)."""
    seen = 0
    for batch in batches:
        if num_images is not None and seen >= num_images:
            return
        size = int(batch["imgs"].shape[0])
        keep = size if num_images is None else min(size, num_images - seen)
        yield {key: value[:keep] for key, value in batch.items()}
        seen += keep


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    return next(iter(model.parameters()), torch.empty(0)).device


def _upsampling(pred_hw: tuple[int, ...], true_hw: tuple[int, ...], mode: UpsampleMode) -> Optional[UpsampleMode]:
    return None if pred_hw == true_hw else mode


def slot_spread(posterior_loc: torch.Tensor, posterior_scale: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """How far apart an image's K slots are, in units of their posterior noise: [B] (None without σ).

    The standard deviation over the K slots of the posterior means μ [B, K, D] (population std), averaged
    over the D dimensions, divided by the mean posterior σ [B, K, D] of the image. Near 0 the slots hold the
    same posterior (they all read the same thing, typically the background); slots that hold different
    objects are apart by a good fraction of σ or more.
    """
    if posterior_scale is None:
        return None
    loc = posterior_loc.float()
    spread = loc.std(dim=1, correction=0).mean(dim=1)  # [B]
    return spread / posterior_scale.float().mean(dim=(1, 2))  # [B]


def image_metrics(out: Any, true_masks: Optional[torch.Tensor], upsample_mode: UpsampleMode) -> list[dict[str, Any]]:
    """Per image of a forward pass: {"fg_ari", "ari", "mse", "kl", "nll", "slot_spread"} of its final stage.

    fg_ari and ari are None without ground-truth masks [B,O,1,Hm,Wm] (NaN for fg_ari when an image has no
    foreground), kl, nll and slot_spread None for models without them (Slot Attention).
    """
    spread = slot_spread(out.posterior_loc, out.posterior_scale)
    fg = full = None
    if true_masks is not None:
        masks = out.masks.float().cpu()  # [B,K,1,H,W]
        mode = _upsampling(tuple(masks.shape[-2:]), tuple(true_masks.shape[-2:]), upsample_mode)
        fg = adjusted_rand_index(true_masks, masks, foreground_only=True, upsample_mode=mode)
        full = adjusted_rand_index(true_masks, masks, foreground_only=False, upsample_mode=mode)
    return [
        {
            "fg_ari": None if fg is None else float(fg[b]),
            "ari": None if full is None else float(full[b]),
            "mse": float(out.mse[b]),
            "kl": None if out.kl is None else float(out.kl[b]),
            "nll": None if out.nll is None else float(out.nll[b]),
            "slot_spread": None if spread is None else float(spread[b]),
        }
        for b in range(out.mse.shape[0])
    ]


def evaluate_ari(
    model: torch.nn.Module,
    objective: Any,
    batches: Iterable[Batch],
    *,
    refinement_iters: Optional[int] = None,
    samples: int = 1,
    num_images: Optional[int] = None,
    upsample_mode: UpsampleMode = "bicubic",
    progress: Progress = None,
    require_masks: bool = True,
) -> list[dict[str, Any]]:
    """Per-image metrics of the final inference stage, for `samples` stochastic passes per image.

    Args:
        model, objective: the model and the `Objective` its refinement steps follow.
        batches: batch dicts with `imgs`, `masks`, `index`.
        refinement_iters: I at test time (None: the model's default).
        samples: independent inference passes per image (each gets its own record).
        num_images: stop after this many images (None: all).
        upsample_mode: how predicted masks smaller than the ground truth are resized (CLEVR; see ARI).
        progress: optional callback, called with the images finished after each batch.
        require_masks: raise when a batch has no ground-truth masks; with False such images get no ARI.
    Returns:
        One record per (image, sample): {"index", "sample", "fg_ari", "ari", "mse", "kl", "nll", "slot_spread"};
        kl, nll and slot_spread are None for models without them (Slot Attention), fg_ari and ari for images
        without masks; fg_ari is NaN for an image without foreground.
    """
    if samples < 1:
        raise EmorlError(f"samples must be ≥ 1, got {samples}")
    device = model_device(model)
    records: list[dict[str, Any]] = []
    for batch in take_images(batches, num_images):
        if "masks" not in batch and require_masks:
            raise EmorlError("the batches carry no ground-truth masks; open the split with masks (data.load_masks)")
        images = batch["imgs"].to(device)
        true = batch.get("masks")
        for sample in range(samples):
            with torch.no_grad():
                out = model(images, objective, refinement_iters=refinement_iters)
            for b, metrics in enumerate(image_metrics(out, true, upsample_mode)):
                records.append({"index": int(batch["index"][b]), "sample": sample, **metrics})
        if progress is not None:
            progress(int(images.shape[0]))
    return records


def summarize_records(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean ± (population) std of each metric over the records, skipping NaN and absent values.

    Returns: metric → {"mean", "std", "count", "skipped"} for the metrics the records carry.
    """
    records = list(records)
    summary = {}
    for metric in METRICS:
        values = [r[metric] for r in records if r.get(metric) is not None]
        if values:
            summary[metric] = nan_summary(values)
    return summary


# -------------------------------------------------------------------------------------------------- DCI


def decoded_masks(model: torch.nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """Masks decoded from codes [B,K,D] → probabilities [B,K,1,H,W] (softmax over slots).

    The original matched slots to objects with the masks decoded from the posterior means.
    """
    b, k, d = codes.shape
    _, logits = model.decode(codes.reshape(b * k, d))  # [B*K, H, W]
    return torch.softmax(logits.reshape(b, k, 1, *logits.shape[-2:]), dim=1)


@dataclass
class CodeSet:
    """Codes of slots matched to ground-truth objects, with those objects' target factors."""

    codes: np.ndarray  # [M,D]
    factors: np.ndarray  # [M,F] target columns only (no visibility)
    names: list[str]
    kinds: list[str]
    images: int = 0
    objects: int = 0  # visible objects seen (background excluded)
    matched_per_image: list[int] = field(default_factory=list)


def collect_codes(
    model: torch.nn.Module,
    objective: Any,
    batches: Iterable[Batch],
    *,
    dataset: str,
    refinement_iters: Optional[int] = None,
    num_images: Optional[int] = None,
    upsample_mode: UpsampleMode = "bicubic",
    min_pixels: int = 50,
    min_iou: float = 0.1,
    progress: Progress = None,
) -> CodeSet:
    """Posterior means of the slots matched to visible objects, and those objects' factors.

    Matching follows the paper: masks decoded from the posterior means, argmax per pixel, Hungarian
    assignment by IoU, objects under `min_pixels` and pairs under `min_iou` dropped (see `matching.py`).
    """
    spec = dataset_factors(dataset)
    columns, kinds, names = target_factors(spec)
    vis_col = visibility_column(spec)
    device = model_device(model)
    all_codes, all_factors, per_image = [], [], []
    images = objects = 0
    for batch in take_images(batches, num_images):
        if "masks" not in batch or "factors" not in batch:
            raise EmorlError(
                "DCI needs ground-truth masks and factors; open the split with data.load_masks and "
                "data.load_factors (the CLEVR test file has factors)"
            )
        factors = batch["factors"].float().cpu()  # [B,O,F]
        if factors.shape[-1] != len(spec):
            raise EmorlError(
                f"the factors have {factors.shape[-1]} columns but {dataset} has {len(spec)} "
                f"({', '.join(f.name for f in spec)}); check data.dataset"
            )
        with torch.no_grad():
            out = model(batch["imgs"].to(device), objective, refinement_iters=refinement_iters)
            codes = out.posterior_loc  # [B,K,D]
            masks = decoded_masks(model, codes).float().cpu()  # [B,K,1,H,W]
        true = batch["masks"]
        visibility = factors[..., vis_col] if vis_col is not None else None  # [B,O]
        mode = _upsampling(tuple(masks.shape[-2:]), tuple(true.shape[-2:]), upsample_mode)
        matches = match_slots_to_objects(
            masks, true, visibility=visibility, min_pixels=min_pixels, min_iou=min_iou, upsample_mode=mode
        )
        x, y = gather_matched(codes.float().cpu(), factors[..., columns], matches)
        all_codes.append(x)
        all_factors.append(y)
        per_image += [sum(m.image == b for m in matches) for b in range(true.shape[0])]
        images += int(true.shape[0])
        objects += int((visibility[:, 1:] > 0).sum()) if visibility is not None else 0
        if progress is not None:
            progress(int(true.shape[0]))
    if not all_codes:
        raise EmorlError("no images to evaluate; check the split and num_images")
    return CodeSet(
        codes=np.concatenate(all_codes),
        factors=np.concatenate(all_factors),
        names=names,
        kinds=kinds,
        images=images,
        objects=objects,
        matched_per_image=per_image,
    )


def evaluate_dci(code_set: CodeSet, *, seed: int = 0, **gbt_kwargs: Any) -> dict[str, Any]:
    """DCI of collected codes (`compute_dci`), plus how many objects were matched."""
    scores = compute_dci(
        code_set.codes, code_set.factors, code_set.kinds, seed=seed, names=code_set.names, **gbt_kwargs
    )
    scores["images"] = code_set.images
    scores["matched"] = int(code_set.codes.shape[0])
    scores["visible_objects"] = code_set.objects
    return scores
