"""ARI / FG-ARI against sklearn's adjusted_rand_score, on random labelings, real data and edge cases."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from emorl_cli.errors import EmorlError
from emorl_cli.evaluate.ari import (
    adjusted_rand_index,
    nan_summary,
    true_masks_to_labels,
    upsample_masks,
)

FIXTURES = Path(__file__).parent / "data" / "fixtures"


def _one_hot_masks(labels: np.ndarray, num: int, scale: int = 255) -> torch.Tensor:
    """Label map [B,H,W] → binary masks [B,O,1,H,W] with values 0/scale (the .h5 layout)."""
    masks = (labels[:, None] == np.arange(num)[None, :, None, None]).astype(np.uint8) * scale
    return torch.from_numpy(masks[:, :, None])


def _sklearn_ari(true: np.ndarray, pred: np.ndarray, foreground_only: bool) -> float:
    """The oracle: sklearn on the kept pixels of one image; NaN where none is kept (our convention)."""
    true, pred = true.reshape(-1), pred.reshape(-1)
    if foreground_only:
        keep = true != 0
        true, pred = true[keep], pred[keep]
    return math.nan if true.size == 0 else adjusted_rand_score(true, pred)


def _check_against_sklearn(true: np.ndarray, probs: np.ndarray, num_true: int) -> None:
    pred = probs.argmax(axis=1)
    for fg in (False, True):
        got = adjusted_rand_index(
            _one_hot_masks(true, num_true), torch.from_numpy(probs[:, :, None]), foreground_only=fg
        ).numpy()
        want = np.array([_sklearn_ari(t, p, fg) for t, p in zip(true, pred, strict=True)])
        np.testing.assert_allclose(got, want, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("seed", range(6))
def test_random_labelings_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    batch, num_true, k = 5, int(rng.integers(1, 8)), int(rng.integers(1, 9))
    h, w = int(rng.integers(1, 20)), int(rng.integers(1, 20))
    true = rng.integers(0, num_true, size=(batch, h, w))
    probs = rng.random((batch, k, h, w)).astype(np.float32)
    _check_against_sklearn(true, probs, num_true)


def test_structured_labelings_match_sklearn():
    """Predictions that mostly follow the truth (ARI far from 0), with a few pixels flipped."""
    rng = np.random.default_rng(7)
    true = rng.integers(0, 4, size=(8, 16, 16))
    probs = np.eye(6, dtype=np.float32)[(true + 2) % 6].transpose(0, 3, 1, 2).copy()  # relabelled copy
    flip = rng.random(true.shape) < 0.1
    noise = rng.random(probs.shape).astype(np.float32) * 2
    probs = np.where(flip[:, None], noise, probs)
    _check_against_sklearn(true, probs, 4)


def test_degenerate_labelings_match_sklearn():
    h = w = 6
    ones = np.ones((1, h, w), dtype=np.int64)
    cases = [
        (0 * ones, 0 * ones),  # everything background, one predicted slot
        (ones, 0 * ones),  # one object everywhere, one slot
        (ones, np.arange(h * w).reshape(1, h, w) % 3),  # one object, three slots
        (np.arange(h * w).reshape(1, h, w) % 4, 0 * ones),  # four entities, one slot
        (np.pad(ones[:, :1, :1], ((0, 0), (2, 3), (2, 3))), 0 * ones),  # a single foreground pixel
    ]
    for true, pred in cases:
        probs = np.eye(h * w, dtype=np.float32)[pred].transpose(0, 3, 1, 2)[:, : max(pred.max() + 1, 1)]
        _check_against_sklearn(true, np.ascontiguousarray(probs), int(true.max()) + 1)


def test_both_single_cluster_is_one():
    true = torch.zeros(2, 1, 1, 4, 4)
    true[:, 0] = 1  # everything is entity 0
    pred = torch.zeros(2, 3, 1, 4, 4)
    pred[:, 1] = 1  # everything in slot 1
    assert adjusted_rand_index(true, pred, foreground_only=False).tolist() == [1.0, 1.0]


def test_every_pixel_its_own_cluster_is_one():
    labels = torch.arange(9).view(1, 3, 3)
    assert adjusted_rand_index(labels, labels, foreground_only=False).item() == 1.0


def test_single_object_fully_covered_is_one_in_fg_ari():
    """One foreground object all in one slot, background in another: FG-ARI 1 (the original code agrees)."""
    labels = torch.zeros(1, 5, 5, dtype=torch.long)
    labels[0, 1:3, 1:3] = 1
    pred = torch.where(labels == 1, 2, 0)
    assert adjusted_rand_index(labels, pred, foreground_only=True).item() == 1.0


def test_image_without_foreground_is_nan_and_skipped_in_summaries():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[1, :2] = 1
    labels[1, 2:] = 2
    pred = labels.clone()
    ari = adjusted_rand_index(labels, pred, foreground_only=True)
    assert math.isnan(ari[0].item()) and ari[1].item() == 1.0
    assert adjusted_rand_index(labels, pred, foreground_only=False)[0].item() == 1.0  # full ARI defined
    summary = nan_summary(ari)
    assert summary == {"mean": 1.0, "std": 0.0, "count": 1, "skipped": 1}


def test_permutation_invariance_and_masks_scale():
    rng = np.random.default_rng(3)
    true = rng.integers(0, 4, size=(3, 12, 12))
    probs = torch.rand(3, 5, 1, 12, 12)
    a = adjusted_rand_index(_one_hot_masks(true, 4), probs, foreground_only=True)
    b = adjusted_rand_index(_one_hot_masks(true, 4, scale=1).float(), probs[:, [4, 2, 0, 1, 3]], foreground_only=True)
    torch.testing.assert_close(a, b)


def test_masks_to_labels_follows_the_original():
    """Overlaps go to the larger entity index; pixels with no mask on are background."""
    masks = torch.zeros(1, 3, 1, 1, 3, dtype=torch.uint8)
    masks[0, 1, 0, 0, :2] = 255
    masks[0, 2, 0, 0, 1] = 255
    labels, num = true_masks_to_labels(masks)
    assert num == 3 and labels.tolist() == [[[1, 2, 0]]]


def test_published_model_fg_ari_on_real_tetrominoes():
    with h5py.File(FIXTURES / "tetrominoes_real10_test.h5", "r") as f:
        true = torch.from_numpy(f["test/masks"][:]).permute(0, 1, 4, 2, 3)  # [10,4,1,35,35]
        pred = torch.from_numpy(f["published_model_pred_masks"][:]).permute(0, 1, 4, 2, 3)
    fg = adjusted_rand_index(true, pred, foreground_only=True).numpy()
    full = adjusted_rand_index(true, pred, foreground_only=False).numpy()
    true_labels, _ = true_masks_to_labels(true)
    pred_labels = pred[:, :, 0].argmax(1)
    for i in range(10):
        assert fg[i] == pytest.approx(_sklearn_ari(true_labels[i].numpy(), pred_labels[i].numpy(), True), abs=1e-9)
        assert full[i] == pytest.approx(_sklearn_ari(true_labels[i].numpy(), pred_labels[i].numpy(), False), abs=1e-9)
    assert fg.mean() > 0.95


def test_upsampling_reproduces_pillow_resize():
    """The original resized each float mask with PIL's default filter (bicubic); nearest/bilinear too."""
    rng = np.random.default_rng(0)
    for in_hw, out_hw in [((12, 12), (24, 24)), ((5, 7), (13, 11)), ((10, 9), (7, 6))]:
        mask = rng.random(in_hw).astype(np.float32)
        for mode, resample in [("bicubic", None), ("bilinear", Image.BILINEAR), ("nearest", Image.NEAREST)]:
            image = Image.fromarray(mask)
            ref = image.resize(out_hw[::-1]) if resample is None else image.resize(out_hw[::-1], resample)
            got = upsample_masks(torch.from_numpy(mask)[None, None], out_hw, mode)[0, 0].numpy()
            np.testing.assert_allclose(got, np.array(ref), atol=1e-6)


def test_size_mismatch_needs_an_upsampling_mode():
    true = torch.zeros(1, 2, 1, 8, 8)
    true[:, 0, :, :4] = 1
    true[:, 1, :, 4:] = 1
    pred = torch.zeros(1, 2, 1, 4, 4)
    pred[:, 0, :, :2] = 1
    pred[:, 1, :, 2:] = 1
    with pytest.raises(EmorlError, match="upsample_mode"):
        adjusted_rand_index(true, pred, foreground_only=False)
    for mode in ("bicubic", "bilinear", "nearest"):
        assert adjusted_rand_index(true, pred, foreground_only=False, upsample_mode=mode).item() == 1.0


def test_batched_result_equals_one_at_a_time():
    rng = np.random.default_rng(11)
    true = _one_hot_masks(rng.integers(0, 5, size=(6, 10, 10)), 5)
    pred = torch.rand(6, 4, 1, 10, 10)
    whole = adjusted_rand_index(true, pred, foreground_only=True)
    single = torch.cat([adjusted_rand_index(true[i : i + 1], pred[i : i + 1], foreground_only=True) for i in range(6)])
    torch.testing.assert_close(whole, single)
