"""The ClevrTex benchmark's metrics (Karazija et al., 2021): ARI, FG-ARI, mIoU and MSE per image.

Shape legend: B images, K predicted slots, G ground-truth ids (0 = background), H×W pixels, C channels,
K' = max(K, largest label + 1) (the square the slot↔object matching works on).

Definitions follow the reference `CLEVRTEX_Evaluator` (clevrtex_eval.py, which EfficientMORL's ClevrTex
evaluation calls with the final-stage masks and reconstruction, one image per batch):

- the predicted segmentation is the argmax of the slot masks; the ground truth is the label map;
- ARI: `sklearn.metrics.adjusted_rand_score` over all pixels; FG-ARI over the pixels whose label is not 0
  (an image without such pixels scores 1, as sklearn does for empty input);
- mIoU: predictions and ground truth are one-hot over K' ids (padded with empty masks); IoU of every
  (slot, id) pair in float32, 0 where either mask is empty; slots are matched to ids by the Hungarian method
  maximising the summed IoU (`scipy.optimize.linear_sum_assignment` on the [id, slot] matrix); the matched
  IoUs are summed over ids — background included — and divided by the number of pairs in which the id or
  its slot is non-empty. An object matched to an empty slot, and a non-empty slot matched to an absent
  object, both count as a pair with IoU 0;
- MSE: the squared error between reconstruction and image in [0, 1], summed over pixels and channels.

The reference averages each over images; `evaluate.clevrtex_report` does the same.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from emorl_cli.errors import EmorlError
from emorl_cli.evaluate.ari import ari_from_labels, contingency

__all__ = ["clevrtex_aris", "clevrtex_miou", "matched_ious", "summed_squared_error"]


def clevrtex_aris(true_labels: torch.Tensor, pred_labels: torch.Tensor, num_pred: int) -> tuple[np.ndarray, np.ndarray]:
    """(ARI [B], FG-ARI [B]) as float64 arrays, as sklearn's adjusted_rand_score computes them.

    Args:
        true_labels: [B,H,W] integer ids, 0 = background.
        pred_labels: [B,H,W] slot ids in [0, num_pred).
    """
    num_true = int(true_labels.max()) + 1 if true_labels.numel() else 1
    ari = ari_from_labels(true_labels, pred_labels, num_true=num_true, num_pred=num_pred)
    fg = ari_from_labels(true_labels, pred_labels, num_true=num_true, num_pred=num_pred, keep=true_labels != 0)
    fg = torch.nan_to_num(fg, nan=1.0)  # no foreground pixel: sklearn scores two empty labelings 1
    return ari.cpu().numpy(), fg.cpu().numpy()


def matched_ious(true_labels: torch.Tensor, pred_labels: torch.Tensor, num_pred: int) -> list[tuple[np.ndarray, int]]:
    """Per image, the IoU of each ground-truth id with its Hungarian-matched slot, and the pair count.

    Returns:
        [(ious [K'] float64 indexed by ground-truth id, number of pairs where the id or its slot is non-empty)].
    """
    if true_labels.shape != pred_labels.shape or true_labels.dim() != 3:
        raise EmorlError(
            f"labels must be [B,H,W] of one shape, got {list(true_labels.shape)} and {list(pred_labels.shape)}"
        )
    out = []
    for b in range(true_labels.shape[0]):
        true_b, pred_b = true_labels[b : b + 1], pred_labels[b : b + 1]  # [1,H,W]
        size = max(num_pred, int(true_b.max()) + 1)  # K'
        nij = contingency(true_b, pred_b, num_true=size, num_pred=size)[0].cpu().numpy()  # [K', K'] slot × id
        slot_area = nij.sum(axis=1)  # [K']
        id_area = nij.sum(axis=0)  # [K']
        union = slot_area[:, None] + id_area[None, :] - nij
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = nij.astype(np.float32) / union.astype(np.float32)  # float32 division, as the reference
        iou[(slot_area == 0)[:, None] | (id_area == 0)[None, :]] = 0.0
        ids, slots = linear_sum_assignment(iou.T, maximize=True)  # rows: ground-truth ids, columns: slots
        ious = np.zeros(size)
        ious[ids] = iou.T[ids, slots]
        pairs = int(((id_area[ids] > 0) | (slot_area[slots] > 0)).sum())
        out.append((ious, pairs))
    return out


def clevrtex_miou(true_labels: torch.Tensor, pred_labels: torch.Tensor, num_pred: int) -> np.ndarray:
    """mIoU [B] float64: matched IoUs summed over ground-truth ids (background included) / pairs."""
    return np.array([ious.sum() / pairs for ious, pairs in matched_ious(true_labels, pred_labels, num_pred)])


def summed_squared_error(reconstruction: torch.Tensor, image: torch.Tensor) -> np.ndarray:
    """Σ over channels and pixels of (reconstruction − image)², per image: [B] float64 (both [B,C,H,W] in [0, 1])."""
    if reconstruction.shape != image.shape:
        raise EmorlError(f"reconstruction {list(reconstruction.shape)} and image {list(image.shape)} differ in shape")
    diff = reconstruction.detach().float().cpu() - image.detach().float().cpu()
    return diff.pow(2).sum(dim=(1, 2, 3)).double().numpy()
