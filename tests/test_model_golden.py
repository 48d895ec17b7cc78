"""Equivalence with the original EfficientMORL code (golden arrays in tests/data/golden, see its README.md).

Deterministic pieces must agree to ~1e-4 (relative to the array's scale); Monte Carlo per-image means of
NLL, KL, total loss, MSE and FG-ARI must agree within 4 combined standard errors,
se = sqrt(std_ours²/n_ours + std_gold²/n_gold).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from emorl_cli.checkpoint import load_for_inference, model_config_from_original
from emorl_cli.config import ModelConfig
from emorl_cli.model.distributions import softplus_to_std
from emorl_cli.model.likelihood import gaussian_nll, gmm_nll

GOLDEN = Path(__file__).parent / "data" / "golden"
REL_TOL = 1e-4
MC_SIGMAS = 4.0


def load_set(name: str):
    """(model in eval mode, ModelConfig, golden arrays) of one golden set."""
    cfg = ModelConfig(**model_config_from_original(json.loads((GOLDEN / f"{name}.json").read_text())))
    model, _, _ = load_for_inference(GOLDEN / f"{name}.pth", cfg)
    return model, cfg, np.load(GOLDEN / f"{name}.npz")


@pytest.fixture(scope="module")
def emorl():
    return load_set("tetrominoes")


@pytest.fixture(scope="module")
def slot_attention():
    return load_set("slot_attention_tetrominoes")


def assert_close(ours: torch.Tensor, gold: np.ndarray, name: str) -> float:
    """Max |ours − gold| relative to max |gold|, asserted ≤ REL_TOL; returns it."""
    ours = ours.detach().cpu().numpy()
    assert ours.shape == gold.shape, f"{name}: shape {ours.shape} vs golden {gold.shape}"
    deviation = float(np.max(np.abs(ours - gold)) / max(np.max(np.abs(gold)), 1e-12))
    assert deviation <= REL_TOL, f"{name}: relative deviation {deviation:.2e} > {REL_TOL}"
    return deviation


# ---------------------------------------------------------------------------------------- deterministic


@pytest.mark.parametrize("name", ["tetrominoes", "slot_attention_tetrominoes"])
def test_decoder(name):
    model, _, gold = load_set(name)
    with torch.no_grad():
        rgb, mask_logits = model.decode(torch.from_numpy(gold["decoder_z"]))
    assert_close(rgb, gold["decoder_rgb"], "decoder_rgb")
    assert_close(mask_logits, gold["decoder_mask_logits"], "decoder_mask_logits")


def test_decoder_without_broadcast_speedup(emorl):
    model, _, gold = emorl
    decoder = model.hvae_networks.image_decoder
    decoder.use_broadcast_conv = False
    try:
        with torch.no_grad():
            rgb, mask_logits = model.decode(torch.from_numpy(gold["decoder_z"]))
    finally:
        decoder.use_broadcast_conv = True
    assert_close(rgb, gold["decoder_rgb"], "decoder_rgb (tiled)")
    assert_close(mask_logits, gold["decoder_mask_logits"], "decoder_mask_logits (tiled)")


def test_likelihoods(emorl):
    _, cfg, gold = emorl
    x, loc, logprobs = (torch.from_numpy(gold[k]) for k in ("lik_x", "lik_x_loc", "lik_mask_logprobs"))
    mean = (loc * logprobs.exp()).sum(1)
    assert_close(gaussian_nll(x, mean, cfg.log_scale), gold["lik_gaussian_nll"], "gaussian nll")
    assert_close(gmm_nll(x, loc, logprobs, cfg.log_scale), gold["lik_gmm_nll"], "gmm nll")


def test_refinement_step(emorl):
    model, _, gold = emorl
    with torch.no_grad():
        delta, hidden = model.refinenet(
            torch.from_numpy(gold["refine_lamda"]),
            torch.from_numpy(gold["refine_grad"]),
            torch.from_numpy(gold["refine_h"]),
        )
    assert_close(delta, gold["refine_delta"], "refine_delta")
    assert_close(hidden, gold["refine_h_next"], "refine_h_next")


def test_dual_gru_update(emorl):
    model, _, gold = emorl
    with torch.no_grad():
        out = model.hvae_networks.gru(torch.from_numpy(gold["gru_updates"])[0], torch.from_numpy(gold["gru_state"]))
    assert_close(out, gold["gru_out"], "gru_out")


def test_softplus_to_std(emorl):
    _, _, gold = emorl
    assert_close(softplus_to_std(torch.from_numpy(gold["softplus_in"])), gold["softplus_std"], "softplus_std")


# ---------------------------------------------------------------------------------------- Monte Carlo


def seeded_noise(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(tuple(shape), generator=generator)


def fg_ari(true_masks: np.ndarray, pred_masks: np.ndarray) -> np.ndarray:
    """true [B, O, 1, H, W] (0/255), pred [S, B, K, 1, H, W] probabilities → FG-ARI [S, B]."""
    true = true_masks.argmax(1)[:, 0]  # [B, H, W]
    pred = pred_masks.argmax(2)[:, :, 0]  # [S, B, H, W]
    fg = true > 0
    return np.array(
        [
            [adjusted_rand_score(true[b][fg[b]], pred[s, b][fg[b]]) for b in range(true.shape[0])]
            for s in range(pred.shape[0])
        ]
    )


def assert_mc_agrees(samples: dict[str, np.ndarray], gold, passes: int) -> dict[str, float]:
    """Per image: |mean_ours − mean_gold| ≤ 4·sqrt(sd_ours²/n + sd_gold²/n_gold). Returns max z per quantity."""
    n_gold = int(gold["mc_samples"])
    worst = {}
    for name, values in samples.items():  # values [S, B]
        mean, std = values.mean(0), values.std(0)
        gold_mean, gold_std = gold[f"mc_{name}_mean"], gold[f"mc_{name}_std"]
        se = np.sqrt(std**2 / passes + gold_std**2 / n_gold)
        gap = np.abs(mean - gold_mean)
        z = np.where(se > 0, gap / np.maximum(se, 1e-300), np.where(gap <= 1e-9, 0.0, np.inf))
        worst[name] = float(z.max())
        assert np.all(z <= MC_SIGMAS), (
            f"mc_{name}: per-image z {np.round(z, 2).tolist()} (ours {mean.tolist()}, golden {gold_mean.tolist()})"
        )
    return worst


@pytest.mark.slow
def test_emorl_monte_carlo(emorl):
    """Eval mode, kl_beta 1, I refinement steps, plain ELBO objective (golden "geco": null)."""
    model, cfg, gold = emorl
    images = torch.from_numpy(gold["mc_images"])  # [B, 3, H, W]
    passes, b = 32, images.shape[0]
    with torch.no_grad():
        out = model(images.repeat(passes, 1, 1, 1), noise=seeded_noise(1234))
    per_pass = lambda t: t.view(passes, b).double().numpy()  # noqa: E731
    samples = {
        "nll": per_pass(out.nll),
        "kl": per_pass(out.kl),
        "loss": per_pass(out.loss_per_image),
        "mse": per_pass(out.mse),
        "fg_ari": fg_ari(gold["mc_true_masks"], out.masks.view(passes, b, cfg.K, 1, *cfg.input_size[1:]).numpy()),
    }
    assert_mc_agrees(samples, gold, passes)


@pytest.mark.slow
def test_slot_attention_monte_carlo(slot_attention):
    model, cfg, gold = slot_attention
    images = torch.from_numpy(gold["mc_images"])
    passes, b = 30, images.shape[0]
    with torch.no_grad():
        out = model(images.repeat(passes, 1, 1, 1), noise=seeded_noise(99))
    per_pass = lambda t: t.view(passes, b).double().numpy()  # noqa: E731
    samples = {
        "loss": per_pass(out.loss_per_image),
        "mse": per_pass(out.mse),
        "fg_ari": fg_ari(gold["mc_true_masks"], out.masks.view(passes, b, cfg.K, 1, *cfg.input_size[1:]).numpy()),
    }
    assert_mc_agrees(samples, gold, passes)
