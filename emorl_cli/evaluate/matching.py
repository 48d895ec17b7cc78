"""Match predicted slots to ground-truth objects by mask IoU (Hungarian method), as the paper's DCI did.

Shape legend: N images, K slots, O ground-truth entities (entity 0 = background), D latent size,
F factor columns, M matched (image, slot, object) triples.

Rules (from the original `matching_iou`): each slot owns the pixels where it has the largest mask
probability; background and invisible objects are not matched; objects with fewer than `min_pixels`
pixels (occluded or cropped out) are skipped; the slot↔object assignment maximises the total IoU
(`scipy.optimize.linear_sum_assignment`); assigned pairs with IoU below `min_iou` are dropped.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from emorl_cli.errors import EmorlError
from emorl_cli.evaluate.ari import UpsampleMode, contingency, segmentation_labels

__all__ = ["Match", "mask_iou", "match_slots_to_objects", "gather_matched"]


class Match(NamedTuple):
    """One slot of one image assigned to one ground-truth object (object ≥ 1; 0 is the background)."""

    image: int
    slot: int
    object: int


def mask_iou(nij: torch.Tensor) -> torch.Tensor:
    """IoU of every (slot, entity) pair from contingency tables [N,K,G] → [N,K,G] float64 (0 where both empty)."""
    nij = nij.to(torch.float64)
    slot_area = nij.sum(dim=2, keepdim=True)  # [N,K,1]
    entity_area = nij.sum(dim=1, keepdim=True)  # [N,1,G]
    union = slot_area + entity_area - nij
    return torch.where(union > 0, nij / union.clamp_min(1), torch.zeros_like(nij))


def match_slots_to_objects(
    pred_masks: torch.Tensor,
    true_masks: torch.Tensor,
    *,
    visibility: torch.Tensor | np.ndarray | None = None,
    min_pixels: int = 50,
    min_iou: float = 0.1,
    upsample_mode: UpsampleMode | None = None,
) -> list[Match]:
    """Hungarian slot↔object matching by mask IoU, per image.

    Args:
        pred_masks: slot probabilities [N,K,1,h,w] (or an integer label map [N,h,w]).
        true_masks: binary masks [N,O,1,H,W] (0/255 or 0/1) or a label map [N,H,W].
        visibility: [N,O] — objects whose entry is 0 are not matched (the factors' visibility column);
            None considers every non-background entity.
        min_pixels: objects with fewer ground-truth pixels are skipped (the paper: 50).
        min_iou: assigned pairs below this IoU are dropped (the paper: 0.1).
        upsample_mode: resize predictions to the ground-truth size first (CLEVR: 'bicubic'), see ARI.
    Returns:
        matches sorted by image, then object.
    """
    true_labels, num_true, pred_labels, num_pred = segmentation_labels(true_masks, pred_masks, upsample_mode)
    nij = contingency(true_labels, pred_labels, num_true=num_true, num_pred=num_pred)  # [N,K,G]
    iou = mask_iou(nij).cpu().numpy()  # [N,K,G]
    object_pixels = nij.sum(dim=1).cpu().numpy()  # [N,G]
    candidates = object_pixels >= min_pixels
    candidates[:, 0] = False  # never the background
    if visibility is not None:
        vis = np.asarray(torch.as_tensor(visibility).cpu())
        if vis.shape[0] != candidates.shape[0] or vis.shape[1] > num_true:
            raise EmorlError(
                f"visibility has shape {list(vis.shape)} but there are {candidates.shape[0]} images with "
                f"{num_true} entities; pass the factors' visibility column [N,O]"
            )
        candidates[:, : vis.shape[1]] &= vis > 0
    matches: list[Match] = []
    for n in range(candidates.shape[0]):
        objects = np.flatnonzero(candidates[n])
        if objects.size == 0:
            continue
        scores = iou[n][:, objects].T  # [objects, K]
        rows, slots = linear_sum_assignment(scores, maximize=True)
        for r, k in zip(rows, slots, strict=True):
            if scores[r, k] >= min_iou:
                matches.append(Match(image=n, slot=int(k), object=int(objects[r])))
    return matches


def gather_matched(
    codes: torch.Tensor | np.ndarray, factors: torch.Tensor | np.ndarray, matches: list[Match]
) -> tuple[np.ndarray, np.ndarray]:
    """Pick each match's slot code and object factors.

    Args:
        codes: [N,K,D] posterior means.
        factors: [N,O,F] ground-truth factors.
    Returns:
        (codes [M,D], factors [M,F]) as float64 arrays, row m belonging to matches[m].
    """
    codes = np.asarray(torch.as_tensor(codes).detach().cpu(), dtype=np.float64)
    factors = np.asarray(torch.as_tensor(factors).detach().cpu(), dtype=np.float64)
    if not matches:
        return np.zeros((0, codes.shape[-1])), np.zeros((0, factors.shape[-1]))
    images, slots, objects = (np.array(col) for col in zip(*matches, strict=True))
    return codes[images, slots], factors[images, objects]
