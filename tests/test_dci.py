"""DCI scores, slot↔object matching, the factor registry and latent activeness."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from emorl_cli.config import DATASET_ENTITIES
from emorl_cli.data.registry import DATASETS
from emorl_cli.errors import EmorlError
from emorl_cli.evaluate.activeness import (
    latent_ranges,
    posterior_mean_variance,
    top_k_active_dims,
    traversal_activeness,
    traversal_latents,
    traversal_values,
    update_latent_ranges,
)
from emorl_cli.evaluate.dci import (
    DISCRETE_FACTORS,
    completeness,
    compute_dci,
    dataset_factors,
    disentanglement,
    target_factors,
    visibility_column,
)
from emorl_cli.evaluate.matching import Match, gather_matched, match_slots_to_objects

FIXTURES = Path(__file__).parent / "data" / "fixtures"
GBT = {"n_estimators": 20}  # small forests keep the tests fast


def _factors(rng, m):
    cont = rng.random((m, 3))
    disc = rng.integers(0, 4, size=(m, 2)).astype(float)
    return np.concatenate([cont, disc], 1), ["continuous"] * 3 + ["discrete"] * 2


# -------------------------------------------------------------------------------------------------- DCI


def test_codes_that_copy_the_factors_are_disentangled_and_complete():
    rng = np.random.default_rng(0)
    factors, kinds = _factors(rng, 600)
    codes = np.concatenate([factors + 0.02 * rng.normal(size=factors.shape), rng.normal(size=(600, 5))], 1)
    codes = codes[:, rng.permutation(codes.shape[1])]  # where the informative dims sit must not matter
    scores = compute_dci(codes, factors, kinds, seed=1, **GBT)
    assert scores["disentanglement"] > 0.9
    assert scores["completeness"] > 0.9
    assert scores["informativeness_test"] > 0.9
    assert scores["num_train"] == scores["num_test"] == 300
    assert np.array(scores["importance"]).shape == (10, 5)


def test_random_codes_are_neither_disentangled_nor_informative():
    rng = np.random.default_rng(1)
    factors, kinds = _factors(rng, 600)
    scores = compute_dci(rng.normal(size=(600, 10)), factors, kinds, seed=1, **GBT)
    assert scores["disentanglement"] < 0.2
    assert scores["completeness"] < 0.2
    assert scores["informativeness_test"] < 0.4


def test_each_factor_gets_its_own_kind_of_model():
    """The original re-used its first model for every factor; here a regressor's R² and a classifier's
    accuracy come out per factor."""
    rng = np.random.default_rng(2)
    factors, kinds = _factors(rng, 400)
    scores = compute_dci(factors.copy(), factors, kinds, seed=0, names=list("abcde"), **GBT)
    per = {e["name"]: e for e in scores["per_factor"]}
    assert [per[n]["kind"] for n in "abcde"] == kinds
    assert all(per[n]["test"] > 0.9 for n in "abcde")  # a continuous factor scored by exact equality fails this
    assert all(0 <= per[n]["completeness"] <= 1 for n in "abcde")


def test_dci_is_reproducible_with_a_seed():
    rng = np.random.default_rng(3)
    factors, kinds = _factors(rng, 200)
    codes = rng.normal(size=(200, 6))
    assert compute_dci(codes, factors, kinds, seed=4, **GBT) == compute_dci(codes, factors, kinds, seed=4, **GBT)


def test_importance_matrix_scores_by_hand():
    assert disentanglement(np.eye(3)) == pytest.approx(1.0)
    assert completeness(np.eye(3)) == pytest.approx(1.0)
    assert disentanglement(np.ones((4, 3))) == pytest.approx(0.0)
    assert completeness(np.ones((4, 3))) == pytest.approx(0.0)
    one_code_explains_both = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert disentanglement(one_code_explains_both) == pytest.approx(0.0)  # that code mixes two factors
    assert completeness(one_code_explains_both) == pytest.approx(1.0)  # each factor lives in one code
    assert disentanglement(np.zeros((3, 2))) == completeness(np.zeros((3, 2))) == 0.0
    # two codes, two factors: code 0 → factor 0 only (weight 2/3); code 1 splits evenly (weight 1/3)
    r = np.array([[2.0, 0.0], [0.5, 0.5]])
    assert disentanglement(r) == pytest.approx(2 / 3)


def test_constant_discrete_factor_is_handled():
    rng = np.random.default_rng(5)
    codes = rng.normal(size=(40, 3))
    factors = np.stack([codes[:, 0], np.full(40, 2.0)], 1)
    scores = compute_dci(codes, factors, ["continuous", "discrete"], seed=0, **GBT)
    assert scores["per_factor"][1]["test"] == 1.0
    assert np.array(scores["importance"])[:, 1].tolist() == [0.0, 0.0, 0.0]


def test_dci_rejects_mismatched_inputs():
    with pytest.raises(EmorlError, match="kinds"):
        compute_dci(np.zeros((10, 2)), np.zeros((10, 3)), ["discrete"], seed=0)
    with pytest.raises(EmorlError, match="same M"):
        compute_dci(np.zeros((10, 2)), np.zeros((9, 1)), ["discrete"], seed=0)
    with pytest.raises(EmorlError, match="matched"):
        compute_dci(np.zeros((2, 2)), np.zeros((2, 1)), ["discrete"], seed=0)


# ----------------------------------------------------------------------------------------------- factors


def test_registry_covers_every_dataset_and_fits_the_fixture():
    with_factors = {name for name in DATASET_ENTITIES if name in DATASETS and DATASETS[name].factor_names}
    assert set(DISCRETE_FACTORS) == with_factors  # ClevrTex is read without factor arrays
    for dataset, discrete in DISCRETE_FACTORS.items():
        assert discrete <= {f.name for f in dataset_factors(dataset)}  # no kind for a column that is not there
    with h5py.File(FIXTURES / "tetrominoes_iodine_mini_test.h5", "r") as f:
        factors = f["test/factors"][:]  # [10,4,7]
    spec = dataset_factors("tetrominoes")
    assert len(spec) == factors.shape[-1]
    vis = visibility_column(spec)
    assert vis == 6 and set(np.unique(factors[..., vis])) <= {0.0, 1.0}
    columns, kinds, names = target_factors(spec)
    assert names == ["x", "y", "shape", "r", "g", "b"] and "visibility" not in names
    assert kinds[names.index("shape")] == "discrete"
    clevr = dataset_factors("clevr6")
    assert [f.name for f in clevr if f.kind == "continuous"] == ["x", "y", "z", "rotation"]  # as the original
    assert [f.name for f in clevr if f.kind == "discrete"] == ["size", "material", "shape", "colour"]
    with pytest.raises(EmorlError, match="known"):
        dataset_factors("mnist")


# ---------------------------------------------------------------------------------------------- matching


def _label_masks(labels: np.ndarray, num: int) -> torch.Tensor:
    """[N,H,W] labels → [N,num,1,H,W] 0/255 masks."""
    return torch.from_numpy((labels[:, None, None] == np.arange(num)[None, :, None, None, None]).astype(np.uint8) * 255)


def test_hungarian_matching_on_a_constructed_case():
    h = w = 20
    truth = np.zeros((2, h, w), dtype=np.int64)
    truth[0, :10, :10] = 1  # 100 px
    truth[0, 10:, 10:] = 2  # 100 px
    truth[0, 0, 19] = 3  # 1 px: skipped (< 50 px)
    truth[1, :, :8] = 1  # 160 px, but invisible
    truth[1, :, 12:] = 2  # 160 px
    pred = np.zeros((2, 4, h, w), dtype=np.float32)  # slot probabilities; slot 0 owns what no other slot does
    pred[:, 0] = 0.1
    pred[0, 3, :10, :10] = 1  # slot 3 = object 1 (IoU 1)
    pred[0, 1, 10:, 10:] = 1  # slot 1 owns 70 px of object 2 (IoU 0.7) ...
    pred[0, 2, 10:, 10:13] = 2  # ... slot 2 the other 30 (IoU 0.3)
    pred[1, 1, :, 10:] = 1  # slot 1 covers object 2 and 40 px of background: IoU 160/200
    vis = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0]])
    matches = match_slots_to_objects(torch.from_numpy(pred)[:, :, None], _label_masks(truth, 4), visibility=vis)
    # image 0: object 3 is too small and the background is never matched; image 1: object 1 is invisible
    assert matches == [Match(0, 3, 1), Match(0, 1, 2), Match(1, 1, 2)]


def test_matching_drops_pairs_below_min_iou_and_upsamples():
    truth = np.zeros((1, 16, 16), dtype=np.int64)
    truth[0, :8] = 1  # 128 px
    pred = np.zeros((1, 2, 8, 8), dtype=np.float32)
    pred[0, 0] = 1
    pred[0, 1, :1, :1] = 2  # slot 1 owns one 2×2 block: IoU 4/128 < 0.1
    masks = _label_masks(truth, 2)
    with pytest.raises(EmorlError, match="upsample_mode"):
        match_slots_to_objects(torch.from_numpy(pred)[:, :, None], masks)
    pred_t = torch.from_numpy(pred)[:, :, None]
    assert match_slots_to_objects(pred_t, masks, upsample_mode="nearest", min_iou=0.5) == []
    assert match_slots_to_objects(pred_t, masks, upsample_mode="nearest", min_iou=0.1) == [Match(0, 0, 1)]


def test_matching_the_published_model_on_real_tetrominoes():
    with h5py.File(FIXTURES / "tetrominoes_real10_test.h5", "r") as f:
        true = torch.from_numpy(f["test/masks"][:]).permute(0, 1, 4, 2, 3)
        pred = torch.from_numpy(f["published_model_pred_masks"][:]).permute(0, 1, 4, 2, 3)
    matches = match_slots_to_objects(pred, true)
    assert len(matches) == 30  # three 100-px pieces per image, all found
    for n in range(10):
        slots = [m.slot for m in matches if m.image == n]
        assert len(set(slots)) == 3


def test_gather_matched_picks_codes_and_factors():
    codes = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    factors = np.arange(2 * 4 * 5).reshape(2, 4, 5)
    x, y = gather_matched(codes, factors, [Match(0, 2, 1), Match(1, 0, 3)])
    assert x.tolist() == [[4.0, 5.0], [6.0, 7.0]]
    assert y.tolist() == [factors[0, 1].tolist(), factors[1, 3].tolist()]
    x, y = gather_matched(codes, factors, [])
    assert x.shape == (0, 2) and y.shape == (0, 5)


# -------------------------------------------------------------------------------------------- activeness


def test_latent_ranges_and_traversal_values():
    z = torch.tensor([[[0.0, 5.0], [2.0, -1.0]], [[-3.0, 1.0], [1.0, 0.0]]])  # [N=2,K=2,D=2]
    mins, maxs = latent_ranges(z)
    assert mins.tolist() == [-3.0, -1.0] and maxs.tolist() == [2.0, 5.0]
    running = update_latent_ranges(None, z[:1])
    running = update_latent_ranges(running, z[1:])
    assert running[0].tolist() == mins.tolist() and running[1].tolist() == maxs.tolist()
    values = traversal_values((mins, maxs), 6)
    assert values.shape == (2, 6) and values[:, 0].tolist() == [-3.0, -1.0] and values[:, -1].tolist() == [2.0, 5.0]


def test_traversal_latents_change_one_slot_and_dim():
    z = torch.zeros(2, 3, 4)
    out = traversal_latents(z, torch.tensor([1, 2]), 3, torch.tensor([1.0, 2.0, 3.0]))
    assert out.shape == (2, 3, 3, 4)
    assert out[0, :, 1, 3].tolist() == [1.0, 2.0, 3.0] and out[1, :, 2, 3].tolist() == [1.0, 2.0, 3.0]
    assert out.abs().sum().item() == 12.0  # nothing else changed


def test_traversal_activeness_finds_the_dims_the_decoder_uses():
    def render(z):  # [B,K,D] → [B,3,4,4]: only dims 1 and 3 (×2) reach the picture
        signal = z[..., 1].sum(1) + 2 * z[..., 3].sum(1)  # [B]
        return signal.view(-1, 1, 1, 1).expand(-1, 3, 4, 4)

    z = torch.randn(5, 3, 6)
    ranges = (torch.full((6,), -1.0), torch.full((6,), 1.0))
    act = traversal_activeness(render, z, ranges, slots=torch.tensor([0, 1, 2, 0, 1]), steps=6)
    assert act.shape == (5, 6)
    assert torch.allclose(act[:, [0, 2, 4, 5]], torch.zeros(5, 4))
    assert torch.allclose(act[:, 3], 4 * act[:, 1])
    assert top_k_active_dims(act, 2).tolist() == [3, 1]


def test_posterior_mean_variance_and_top_k():
    codes = torch.zeros(10, 2, 5)
    codes[:, 0, 2] = torch.arange(10.0)
    codes[:, 1, 4] = torch.arange(10.0) * 3
    var = posterior_mean_variance(codes)
    assert var.shape == (2, 5)
    assert top_k_active_dims(var, 2).tolist() == [4, 2]
    assert top_k_active_dims(var[0], 1).tolist() == [2]
    assert top_k_active_dims(var, 99).numel() == 5
    with pytest.raises(EmorlError):
        posterior_mean_variance(codes[:1])
