"""ClevrTex metrics against second implementations.

Oracles: sklearn's adjusted_rand_score (ARI, FG-ARI); a transcription, in plain loops over one-hot masks, of
the reference evaluator's mIoU steps (IoU matrix, scipy's linear_sum_assignment, re-indexing, pair count);
a brute-force search over every slot permutation for the optimal matching; hand-computed small cases.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from emorl_cli.evaluate.clevrtex_metrics import clevrtex_aris, clevrtex_miou, matched_ious, summed_squared_error
from emorl_cli.evaluate.clevrtex_report import evaluate_clevrtex


def random_labelings(seed: int, batch: int = 12, size: int = 9, num_true: int = 5, num_pred: int = 6):
    """Label maps [B,H,W] with blocky objects, and predictions that partly agree with them."""
    rng = np.random.default_rng(seed)
    true = np.zeros((batch, size, size), np.int64)
    for b in range(batch):
        for obj in range(1, int(rng.integers(1, num_true))):
            y, x = rng.integers(0, size - 2, size=2)
            true[b, y : y + int(rng.integers(2, 5)), x : x + int(rng.integers(2, 5))] = obj
    pred = np.where(rng.random(true.shape) < 0.7, true % num_pred, rng.integers(0, num_pred, true.shape))
    pred[0] = 0  # one slot takes everything
    pred[1] = true[1]  # perfect
    return torch.from_numpy(true), torch.from_numpy(pred)


def reference_miou(true: np.ndarray, pred: np.ndarray, num_pred: int) -> float:
    """The reference evaluator's mIoU for one image, step by step over one-hot masks."""
    size = max(int(true.max()) + 1, num_pred)
    true_masks = np.stack([true == i for i in range(size)])  # [K', H, W]
    pred_masks = np.stack([pred == i for i in range(size)])
    iou = np.zeros((size, size), np.float32)  # [pred, true]
    for p in range(size):
        for t in range(size):
            inter = np.float32((pred_masks[p] & true_masks[t]).sum())
            union = np.float32((pred_masks[p] | true_masks[t]).sum())
            if pred_masks[p].any() and true_masks[t].any():
                iou[p, t] = inter / union
    true_ind, pred_ind = linear_sum_assignment(iou.T, maximize=True)
    ious = iou.T[true_ind, pred_ind].astype(np.float64)
    reindexed = pred_masks[pred_ind]  # slot matched to true id j sits at j
    visible = true_masks.any(axis=(1, 2)) | reindexed.any(axis=(1, 2))
    return float(ious.sum() / visible.sum())


def brute_force_mious(true: np.ndarray, pred: np.ndarray, num_pred: int) -> tuple[float, set[float]]:
    """The optimal summed IoU over every slot permutation, and the mIoU of each optimal assignment."""
    size = max(int(true.max()) + 1, num_pred)
    areas_t = [(true == t).sum() for t in range(size)]
    areas_p = [(pred == p).sum() for p in range(size)]

    def iou(t: int, p: int) -> float:
        if areas_t[t] == 0 or areas_p[p] == 0:
            return 0.0
        inter = ((true == t) & (pred == p)).sum()
        return float(np.float32(inter) / np.float32(areas_t[t] + areas_p[p] - inter))

    best, values = -1.0, set()
    for perm in itertools.permutations(range(size)):
        total = sum(iou(t, perm[t]) for t in range(size))
        pairs = sum(1 for t in range(size) if areas_t[t] or areas_p[perm[t]])
        if total > best + 1e-9:
            best, values = total, {round(total / pairs, 12)}
        elif abs(total - best) <= 1e-9:
            values.add(round(total / pairs, 12))
    return best, values


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ari_and_fg_ari_equal_sklearn(seed):
    true, pred = random_labelings(seed)
    ari, fg = clevrtex_aris(true, pred, num_pred=6)
    for b in range(true.shape[0]):
        t, p = true[b].reshape(-1).numpy(), pred[b].reshape(-1).numpy()
        assert ari[b] == pytest.approx(adjusted_rand_score(t, p), abs=1e-12)
        assert fg[b] == pytest.approx(adjusted_rand_score(t[t > 0], p[t > 0]), abs=1e-12)


def test_fg_ari_of_an_image_without_objects_is_sklearns_one():
    true = torch.zeros(1, 4, 4, dtype=torch.long)
    pred = torch.arange(16).reshape(1, 4, 4) % 3
    ari, fg = clevrtex_aris(true, pred, num_pred=3)
    assert fg[0] == adjusted_rand_score([], []) == 1.0
    assert ari[0] == pytest.approx(adjusted_rand_score(true.reshape(-1), pred.reshape(-1)))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_miou_equals_the_reference_steps(seed):
    true, pred = random_labelings(seed, num_pred=6)
    got = clevrtex_miou(true, pred, num_pred=6)
    for b in range(true.shape[0]):
        assert got[b] == pytest.approx(reference_miou(true[b].numpy(), pred[b].numpy(), 6), abs=1e-12)


@pytest.mark.parametrize("seed", [4, 5])
def test_miou_comes_from_an_optimal_matching(seed):
    true, pred = random_labelings(seed, batch=8, size=7, num_true=4, num_pred=5)
    got = clevrtex_miou(true, pred, num_pred=5)
    for b, (ious, _pairs) in enumerate(matched_ious(true, pred, num_pred=5)):
        best, values = brute_force_mious(true[b].numpy(), pred[b].numpy(), 5)
        assert ious.sum() == pytest.approx(best, abs=1e-6)
        assert round(float(got[b]), 12) in values


def test_miou_by_hand():
    true = torch.zeros(1, 4, 4, dtype=torch.long)
    true[0, :2, :2] = 1  # an object of 4 pixels on 12 of background
    exact = true.clone()
    assert clevrtex_miou(true, exact, num_pred=3)[0] == 1.0  # the empty third id and slot make no pair
    one_slot = torch.zeros_like(true)
    # background IoU 12/16; the object is matched to an empty slot (IoU 0) and still counts: (0.75 + 0) / 2
    assert clevrtex_miou(true, one_slot, num_pred=3)[0] == pytest.approx(0.375)
    split = torch.zeros_like(true)
    split[0, 0, :2] = 1
    split[0, 1, :2] = 2  # the object split over two slots: IoU 0.5, and slot 2 pairs with the absent id 2
    assert clevrtex_miou(true, split, num_pred=3)[0] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    wide = torch.zeros(1, 4, 4, dtype=torch.long)
    wide[0, :2, :2] = 7  # more labels than slots: the matching square grows to 8
    assert clevrtex_miou(wide, exact, num_pred=3)[0] == 1.0


def test_mse_is_summed_over_pixels_and_channels():
    rng = np.random.default_rng(0)
    image, recon = rng.random((2, 2, 3, 5, 4)).astype(np.float32)
    expected = ((recon.astype(np.float64) - image) ** 2).reshape(2, -1).sum(axis=1)
    got = summed_squared_error(torch.from_numpy(recon), torch.from_numpy(image))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


class PerfectModel(torch.nn.Module):
    """Answers with the ground truth: masks one-hot on the batch's labels, the image as reconstruction."""

    def __init__(self, labels: torch.Tensor, slots: int):
        super().__init__()
        self.labels, self.slots = labels, slots
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images, objective, refinement_iters=None):
        masks = torch.nn.functional.one_hot(self.labels, self.slots).permute(0, 3, 1, 2)[:, :, None].float()
        return SimpleNamespace(masks=masks, reconstruction=(images + 1) / 2, kl=torch.full((images.shape[0],), 3.0))


def test_the_runner_scores_a_perfect_model_perfectly_and_a_blank_one_by_the_definitions():
    true, _ = random_labelings(7, batch=3)
    one_hot = torch.nn.functional.one_hot(true, 11).permute(0, 3, 1, 2)[:, :, None].float() * 255  # [B,11,1,H,W]
    batch = {"imgs": torch.rand(3, 3, 9, 9) * 2 - 1, "masks": one_hot, "index": torch.arange(3)}
    records = evaluate_clevrtex(PerfectModel(true, 11), None, [batch])
    assert [r["index"] for r in records] == [0, 1, 2]
    for r in records:
        assert (r["ari"], r["fg_ari"], r["miou"], r["mse"], r["kl"]) == (1.0, 1.0, 1.0, 0.0, 3.0)
    blank = evaluate_clevrtex(PerfectModel(torch.zeros_like(true), 11), None, [batch])
    expected = clevrtex_miou(true, torch.zeros_like(true), 11)
    assert [r["miou"] for r in blank] == pytest.approx(expected.tolist())
    assert all(r["fg_ari"] == 0.0 or r["fg_ari"] == 1.0 for r in blank)  # one predicted cluster
