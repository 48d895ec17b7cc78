"""Adjusted Rand Index (ARI) between ground-truth and predicted segmentations, batched in torch.

Shape legend: B images, O ground-truth entities (entity 0 = background), K predicted slots,
H×W pixels, P = H·W.

Reference: Hubert & Arabie (1985); the semantics follow DeepMind's multi_object_datasets
`segmentation_metrics.adjusted_rand_index` (pixels are the points, the predicted label of a pixel is the
argmax over slots, FG-ARI drops the background pixels) and agree with `sklearn.metrics.adjusted_rand_score`
on the pixels kept, including its degenerate cases:

- both labelings put every kept pixel in ONE cluster → 1 (DeepMind's `both_single_cluster` case; there the
  predicted labels are checked over all pixels, here over the kept pixels, which is what sklearn does);
- both put every kept pixel in its own cluster → 1 (the same zero-over-zero; DeepMind raises instead);
- a single kept pixel → 1 (one cluster each);
- no kept pixel at all (FG-ARI of an image without foreground) → NaN: there is nothing to compare.
  DeepMind's formula divides zero by zero there, the original EfficientMORL code turns that NaN into 0,
  sklearn returns 1. Use `nan_summary` to average while skipping (and counting) such images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from emorl_cli.errors import EmorlError

UpsampleMode = Literal["bicubic", "bilinear", "nearest"]

__all__ = [
    "adjusted_rand_index",
    "ari_from_labels",
    "contingency",
    "segmentation_labels",
    "true_masks_to_labels",
    "pred_masks_to_labels",
    "upsample_masks",
    "nan_summary",
]


# ----------------------------------------------------------------------------------------------- labels


def true_masks_to_labels(true_masks: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Ground truth → one entity id per pixel.

    Args:
        true_masks: binary masks [B,O,1,H,W] with values 0/255 (the .h5 layout) or 0/1, or an integer label
            map [B,H,W] / [B,1,H,W]. From masks, a pixel takes the largest entity index whose mask is on
            there, and 0 (background) where none is — as the original code does.
    Returns:
        labels [B,H,W] (int64) and the number of entity ids G (O for masks, max label + 1 for label maps).
    """
    if true_masks.dim() == 5:
        if true_masks.shape[2] != 1:
            raise EmorlError(
                f"true masks must be [B,O,1,H,W], got shape {list(true_masks.shape)}; pass one channel per entity"
            )
        masks = true_masks[:, :, 0]  # [B,O,H,W]
        on = masks > (127.5 if masks.max() > 1 else 0.5)  # 0/255 or 0/1
        ids = torch.arange(masks.shape[1], device=masks.device).view(1, -1, 1, 1)
        labels = (on.long() * ids).amax(dim=1)  # [B,H,W]
        return labels, masks.shape[1]
    if true_masks.is_floating_point() or true_masks.dtype == torch.bool:
        raise EmorlError(
            f"true masks of shape {list(true_masks.shape)} and dtype {true_masks.dtype}: give binary masks "
            "[B,O,1,H,W] or an integer label map [B,H,W]"
        )
    labels = _squeeze_channel(true_masks, "true label map").long()
    if labels.numel() and labels.min() < 0:
        raise EmorlError(f"true label map has negative ids (min {int(labels.min())}); ids must be ≥ 0")
    return labels, int(labels.max()) + 1 if labels.numel() else 1


def pred_masks_to_labels(pred_masks: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Predicted masks → one slot id per pixel (argmax over slots; ties go to the lowest slot).

    Args:
        pred_masks: slot probabilities (or logits) [B,K,1,H,W] or [B,K,H,W]; or an integer label map [B,H,W].
    Returns:
        labels [B,H,W] (int64) and the number of slot ids K.
    """
    if pred_masks.is_floating_point():
        probs = pred_masks[:, :, 0] if pred_masks.dim() == 5 else pred_masks  # [B,K,H,W]
        if probs.dim() != 4:
            raise EmorlError(f"predicted masks must be [B,K,1,H,W] or [B,K,H,W], got {list(pred_masks.shape)}")
        return probs.argmax(dim=1), probs.shape[1]
    labels = _squeeze_channel(pred_masks, "predicted label map").long()
    return labels, int(labels.max()) + 1 if labels.numel() else 1


def _squeeze_channel(labels: torch.Tensor, what: str) -> torch.Tensor:
    if labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 3:
        raise EmorlError(f"{what} must be [B,H,W] or [B,1,H,W], got shape {list(labels.shape)}")
    return labels


# --------------------------------------------------------------------------------------------- resizing


def _pil_filter(mode: UpsampleMode):
    """(kernel, support) of Pillow's resampling filters."""
    if mode == "bicubic":

        def cubic(x: float, a: float = -0.5) -> float:  # Pillow's bicubic uses a = -0.5
            x = abs(x)
            if x < 1.0:
                return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
            if x < 2.0:
                return (((x - 5.0) * x + 8.0) * x - 4.0) * a
            return 0.0

        return cubic, 2.0
    if mode == "bilinear":
        return (lambda x: max(0.0, 1.0 - abs(x))), 1.0
    raise EmorlError(f"unknown upsampling mode {mode!r}; use 'bicubic', 'bilinear' or 'nearest'")


def _resample_matrix(in_size: int, out_size: int, mode: UpsampleMode) -> torch.Tensor:
    """[out_size, in_size] weights that reproduce Pillow's `Image.resize` along one axis (float64)."""
    scale = in_size / out_size
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    if mode == "nearest":  # Pillow: source pixel floor((x + 0.5) · scale)
        src = [min(int((x + 0.5) * scale), in_size - 1) for x in range(out_size)]
        weights[torch.arange(out_size), torch.tensor(src)] = 1.0
        return weights
    kernel, support = _pil_filter(mode)
    filterscale = max(scale, 1.0)
    support *= filterscale
    for x in range(out_size):  # mirrors Pillow's precompute_coeffs (Resample.c)
        center = (x + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        row = [kernel((i - center + 0.5) / filterscale) for i in range(lo, hi)]
        total = sum(row)
        if total != 0.0:
            row = [w / total for w in row]
        weights[x, lo:hi] = torch.tensor(row, dtype=torch.float64)
    return weights


def upsample_masks(masks: torch.Tensor, size: int | Sequence[int], mode: UpsampleMode = "bicubic") -> torch.Tensor:
    """Resize mask probabilities [..., H, W] to `size` (an int or (H', W')), as Pillow's `Image.resize` would.

    The original evaluation resized each CLEVR slot mask with `PIL.Image.resize((192, 192))` on a float ('F')
    image, whose default filter (Pillow ≥ 7) is bicubic with a = −0.5; that is the default here, computed
    batched as two matrix products. Bicubic can overshoot [0, 1] slightly; only the argmax matters for ARI.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
    in_h, in_w = masks.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return masks
    w_h = _resample_matrix(in_h, out_h, mode).to(masks.device)  # [H',H]
    w_w = _resample_matrix(in_w, out_w, mode).to(masks.device)  # [W',W]
    out = torch.einsum("yh,...hw,xw->...yx", w_h, masks.to(torch.float64), w_w)  # [..., H', W']
    return out.to(masks.dtype if masks.is_floating_point() else torch.float32)


# ------------------------------------------------------------------------------------------------- ARI


def contingency(
    true_labels: torch.Tensor,
    pred_labels: torch.Tensor,
    *,
    num_true: int,
    num_pred: int,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image contingency tables: how many kept pixels have each (slot, entity) pair.

    Args:
        true_labels: [B,...] ids in [0, num_true).
        pred_labels: [B,...] ids in [0, num_pred), same shape.
        keep: optional bool [B,...] selecting the pixels that count (all pixels if None).
    Returns:
        nij [B,K,G] int64 with K = num_pred, G = num_true.
    """
    if true_labels.shape != pred_labels.shape:
        raise EmorlError(
            f"true labels {list(true_labels.shape)} and predicted labels {list(pred_labels.shape)} differ in "
            "shape; upsample the predictions to the ground-truth size first"
        )
    batch = true_labels.shape[0]
    t = true_labels.reshape(batch, -1)  # [B,P]
    p = pred_labels.reshape(batch, -1).to(t.device)  # [B,P]
    image = torch.arange(batch, device=t.device).unsqueeze(1)  # [B,1]
    cell = (image * num_pred + p) * num_true + t  # [B,P] flat index into the [B,K,G] table
    if keep is not None:
        cell = cell[keep.reshape(batch, -1)]
    nij = torch.bincount(cell.reshape(-1), minlength=batch * num_pred * num_true)
    return nij.view(batch, num_pred, num_true)  # [B,K,G]


def ari_from_labels(
    true_labels: torch.Tensor,
    pred_labels: torch.Tensor,
    *,
    num_true: int,
    num_pred: int,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """ARI per image from integer label maps, on the pixels where `keep` is true (all pixels if None).

    Returns:
        ari [B] float64 (NaN where no pixel is kept; see the module docstring for the degenerate cases).
    """
    nij = contingency(true_labels, pred_labels, num_true=num_true, num_pred=num_pred, keep=keep)
    return _ari_from_contingency(nij.to(torch.float64))


def _ari_from_contingency(nij: torch.Tensor) -> torch.Tensor:
    """ARI [B] from contingency tables [B,K,G]; pair counts as in the DeepMind reference (n(n−1), not C(n,2))."""
    n = nij.sum(dim=(1, 2))  # [B] points kept
    a = nij.sum(dim=1)  # [B,G] true cluster sizes
    b = nij.sum(dim=2)  # [B,K] predicted cluster sizes
    rindex = (nij * (nij - 1)).sum(dim=(1, 2))
    aindex = (a * (a - 1)).sum(dim=1)
    bindex = (b * (b - 1)).sum(dim=1)
    pairs = n * (n - 1)
    expected = torch.where(pairs > 0, aindex * bindex / pairs.clamp_min(1), torch.zeros_like(pairs))
    max_rindex = (aindex + bindex) / 2
    denom = max_rindex - expected
    # The denominator vanishes exactly when both labelings are one cluster (aindex = bindex = pairs) or both
    # are all singletons (aindex = bindex = 0); these counts are exact integers in float64, so test them.
    degenerate = ((aindex == pairs) & (bindex == pairs)) | ((aindex == 0) & (bindex == 0))
    ari = (rindex - expected) / torch.where(degenerate, torch.ones_like(denom), denom)
    ari = torch.where(degenerate, torch.ones_like(ari), ari)
    return torch.where(n == 0, torch.full_like(ari, math.nan), ari)


def adjusted_rand_index(
    true_masks: torch.Tensor,
    pred_masks: torch.Tensor,
    *,
    foreground_only: bool,
    upsample_mode: UpsampleMode | None = None,
) -> torch.Tensor:
    """ARI (or FG-ARI) of each image.

    Args:
        true_masks: [B,O,1,H,W] binary masks (0/255 or 0/1, entity 0 = background) or a label map [B,H,W].
        pred_masks: [B,K,1,h,w] slot probabilities (argmax → labels) or an integer label map [B,h,w].
        foreground_only: drop the pixels of entity 0 (FG-ARI, the paper's metric).
        upsample_mode: when (h, w) ≠ (H, W), resize the predicted probabilities to the ground truth first
            ('bicubic' reproduces the original CLEVR evaluation); None makes a size mismatch an error.
    Returns:
        ari [B] float64 on the input's device; NaN for an image with no kept pixel.
    """
    true_labels, num_true, pred_labels, num_pred = segmentation_labels(true_masks, pred_masks, upsample_mode)
    keep = true_labels != 0 if foreground_only else None
    return ari_from_labels(true_labels, pred_labels, num_true=num_true, num_pred=num_pred, keep=keep)


def segmentation_labels(
    true_masks: torch.Tensor, pred_masks: torch.Tensor, upsample_mode: UpsampleMode | None = None
) -> tuple[torch.Tensor, int, torch.Tensor, int]:
    """Ground truth and predictions → label maps of the ground truth's size.

    Returns:
        (true_labels [B,H,W], G, pred_labels [B,H,W], K); see `adjusted_rand_index` for the arguments.
    """
    true_labels, num_true = true_masks_to_labels(true_masks)  # [B,H,W]
    size = tuple(true_labels.shape[-2:])
    if tuple(pred_masks.shape[-2:]) != size:
        if not pred_masks.is_floating_point():
            raise EmorlError(
                f"predicted label map is {tuple(pred_masks.shape[-2:])} but the ground truth is {size}; "
                "pass mask probabilities [B,K,1,h,w] so that they can be resized"
            )
        if upsample_mode is None:
            raise EmorlError(
                f"predicted masks are {tuple(pred_masks.shape[-2:])} but the ground truth is {size}; "
                "pass upsample_mode='bicubic' (what the paper did for CLEVR) to resize the predictions"
            )
        pred_masks = upsample_masks(pred_masks, size, upsample_mode)
    pred_labels, num_pred = pred_masks_to_labels(pred_masks)  # [B,H,W]
    if pred_labels.shape[0] != true_labels.shape[0]:
        raise EmorlError(
            f"{true_labels.shape[0]} ground-truth images but {pred_labels.shape[0]} predictions; pass the same batch"
        )
    return true_labels, num_true, pred_labels.to(true_labels.device), num_pred


def nan_summary(values: Sequence[float] | torch.Tensor) -> dict[str, float]:
    """Mean and (population) standard deviation over the finite values; NaNs are skipped and counted.

    Returns: {"mean", "std", "count", "skipped"}; mean and std are NaN when nothing is left.
    """
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    finite = v[~torch.isnan(v)]
    count = int(finite.numel())
    mean = float(finite.mean()) if count else math.nan
    std = float(finite.std(correction=0)) if count else math.nan
    return {"mean": mean, "std": std, "count": count, "skipped": int(v.numel()) - count}
