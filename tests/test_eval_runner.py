"""The evaluation runner and the picture pipeline, driven by a tiny stand-in model (and once by the real one)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from emorl_cli.errors import EmorlError
from emorl_cli.evaluate.runner import (
    collect_codes,
    decoded_masks,
    evaluate_ari,
    evaluate_dci,
    slot_spread,
    summarize_records,
    take_images,
)
from emorl_cli.evaluate.traversals import composite_renderer
from emorl_cli.pictures import make_gifs, make_viz

H = W = 24
PALETTE = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)  # slot k ↔ colour k
K = PALETTE.shape[0]
D = 8  # code: top, left, bottom, right, r, g, b, an unused dim


class StandIn(nn.Module):
    """Segments images of flat-coloured rectangles by colour; slot k holds the rectangle of colour k.

    decode(z): a slot's mask logit is 10 inside its rectangle [top, bottom) × [left, right) and 0 outside,
    the background slot's (the black one) is 5 everywhere; its colour is z[4:7]; z[7] is ignored (an inactive
    dim). Rows are decoded independently, as a real decoder does.
    """

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # gives the module a device

    def codes(self, images: torch.Tensor) -> torch.Tensor:
        x = (images + 1) / 2  # [B,3,H,W]
        labels = torch.cdist(x.permute(0, 2, 3, 1).reshape(-1, 3), PALETTE).argmin(1).view(-1, H, W)
        z = torch.zeros(images.shape[0], K, D)
        for b in range(images.shape[0]):
            for k in range(1, K):
                rows, cols = torch.nonzero(labels[b] == k, as_tuple=True)
                if rows.numel():
                    z[b, k, :4] = torch.stack([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]).float()
            z[b, :, 4:7] = PALETTE
        return z

    def decode(self, z: torch.Tensor):
        rows = torch.arange(H).view(1, H, 1).float()
        cols = torch.arange(W).view(1, 1, W).float()
        in_rows = (rows >= z[:, 0, None, None]) & (rows < z[:, 2, None, None])  # [N,H,1]
        in_cols = (cols >= z[:, 1, None, None]) & (cols < z[:, 3, None, None])  # [N,1,W]
        inside = in_rows & in_cols  # [N,H,W]
        logits = 10.0 * inside.float()  # [N,H,W]
        background = z[:, 4:7].abs().sum(1) == 0  # [N]: the black slot
        logits[background] = 5.0
        rgb = z[:, 4:7, None, None].expand(-1, 3, H, W)
        return rgb, logits

    def forward(self, images, objective=None, *, refinement_iters=None, record=False):
        b = images.shape[0]
        z = self.codes(images)
        rgb, logits = self.decode(z.view(b * K, D))
        means = rgb.view(b, K, 3, H, W)
        masks = torch.softmax(logits.view(b, K, 1, H, W), dim=1)
        recon = (means * masks).sum(1)
        mse = (recon - (images + 1) / 2).pow(2).mean(dim=(1, 2, 3))
        stage = SimpleNamespace(kind="layer", index=0, means=means, masks=masks, attention=masks)
        refined = SimpleNamespace(kind="refinement", index=1, means=means, masks=masks, attention=None)
        return SimpleNamespace(
            masks=masks,
            reconstruction=recon,
            mse=mse,
            kl=torch.full((b,), 7.0),
            nll=torch.full((b,), -3.0),
            posterior_loc=z,
            posterior_scale=torch.full_like(z, 2.0),
            samples=z,
            trace=[stage, refined] if record else None,
        )


def _scenes(n: int, seed: int = 0, empty_first: bool = False):
    """Batches of images with up to three non-overlapping rectangles, masks [B,4,1,H,W] 0/255, factors."""
    rng = np.random.default_rng(seed)
    imgs = torch.zeros(n, 3, H, W)
    masks = torch.zeros(n, K, 1, H, W)
    factors = torch.zeros(n, K, 7)  # x (top), y (left), shape, r, g, b, visibility
    for i in range(n):
        labels = torch.zeros(H, W, dtype=torch.long)
        factors[i, 0, 6] = 1
        for k, (top, left) in enumerate([(1, 1), (1, 13), (13, 5)], start=1):
            if empty_first and i == 0:
                break
            if rng.random() < 0.2:
                continue  # object absent
            top, left = top + int(rng.integers(0, 3)), left + int(rng.integers(0, 3))
            hgt, wid = int(rng.integers(5, 10)), int(rng.integers(6, 10))
            labels[top : top + hgt, left : left + wid] = k
            factors[i, k] = torch.tensor([top, left, float(hgt > 7), *PALETTE[k].tolist(), 1.0])
        imgs[i] = PALETTE[labels].permute(2, 0, 1)
        masks[i, :, 0] = (labels[None] == torch.arange(K).view(K, 1, 1)).float() * 255
    imgs = imgs * 2 - 1
    return [
        {
            "imgs": imgs[s : s + 4],
            "masks": masks[s : s + 4],
            "factors": factors[s : s + 4],
            "index": torch.arange(s, min(s + 4, n)),
        }
        for s in range(0, n, 4)
    ]


def test_take_images_trims_the_last_batch():
    batches = _scenes(10)
    sizes = [int(b["imgs"].shape[0]) for b in take_images(batches, 6)]
    assert sizes == [4, 2]
    assert sum(int(b["imgs"].shape[0]) for b in take_images(batches, None)) == 10


def test_evaluate_ari_records_and_summary():
    finished = []
    records = evaluate_ari(
        StandIn(), None, _scenes(10, empty_first=True), samples=2, num_images=9, progress=finished.append
    )
    assert len(records) == 18 and sum(finished) == 9
    assert {r["sample"] for r in records} == {0, 1} and sorted({r["index"] for r in records}) == list(range(9))
    assert math.isnan(records[0]["fg_ari"])  # image 0 has no foreground
    assert all(r["fg_ari"] == pytest.approx(1.0) for r in records if r["index"] != 0)
    assert all(r["ari"] == pytest.approx(1.0) for r in records)
    summary = summarize_records(records)
    assert summary["fg_ari"]["count"] == 16 and summary["fg_ari"]["skipped"] == 2
    assert summary["fg_ari"]["mean"] == pytest.approx(1.0)
    assert summary["kl"]["mean"] == 7.0 and summary["nll"]["mean"] == -3.0
    assert summary["mse"]["mean"] < 1e-3


def test_slot_spread_is_the_std_over_slots_in_units_of_sigma():
    batches = _scenes(4)
    records = evaluate_ari(StandIn(), None, batches)
    codes = StandIn().codes(batches[0]["imgs"]).numpy()  # [B, K, D]
    expected = codes.std(axis=1).mean(axis=1) / 2.0  # numpy's std is the population std; σ = 2 in StandIn
    assert [r["slot_spread"] for r in records] == pytest.approx(expected.tolist(), rel=1e-6)
    assert summarize_records(records)["slot_spread"]["mean"] == pytest.approx(expected.mean(), rel=1e-6)


def test_slot_spread_is_zero_for_identical_slots_and_none_without_sigma():
    loc = torch.randn(3, 1, 5).expand(3, 4, 5)  # [B, K, D], every slot the same
    assert slot_spread(loc, torch.ones(3, 4, 5)).tolist() == [0.0, 0.0, 0.0]
    assert slot_spread(loc, None) is None


def test_evaluate_ari_upsamples_to_larger_ground_truth():
    batches = _scenes(4)
    for batch in batches:  # ground truth at twice the model's size, as CLEVR's 192 px masks
        batch["masks"] = batch["masks"].repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    records = evaluate_ari(StandIn(), None, batches)
    assert all(r["ari"] > 0.9 for r in records)


def test_evaluate_ari_needs_masks():
    batches = [{k: v for k, v in b.items() if k != "masks"} for b in _scenes(4)]
    with pytest.raises(EmorlError, match="masks"):
        evaluate_ari(StandIn(), None, batches)


def test_collect_codes_matches_every_visible_object():
    batches = _scenes(40, seed=1)
    model = StandIn()
    codes = collect_codes(model, None, batches, dataset="tetrominoes", min_pixels=20)
    visible = int(sum((b["factors"][:, 1:, 6] > 0).sum() for b in batches))
    assert codes.objects == visible and codes.images == 40
    assert codes.codes.shape == (visible, D) and codes.factors.shape == (visible, 6)
    assert codes.names == ["x", "y", "shape", "r", "g", "b"]
    np.testing.assert_array_equal(codes.codes[:, :2], codes.factors[:, :2])  # top/left code = x/y factor
    scores = evaluate_dci(codes, seed=0, n_estimators=10)
    assert scores["matched"] == visible and scores["images"] == 40
    assert 0 <= scores["disentanglement"] <= 1 and 0 <= scores["completeness"] <= 1


def test_collect_codes_needs_factors():
    batches = [{k: v for k, v in b.items() if k != "factors"} for b in _scenes(4)]
    with pytest.raises(EmorlError, match="factors"):
        collect_codes(StandIn(), None, batches, dataset="tetrominoes")


def test_decoded_masks_are_a_softmax_over_slots():
    model = StandIn()
    z = model.codes(_scenes(4)[0]["imgs"])
    masks = decoded_masks(model, z)
    assert masks.shape == (4, K, 1, H, W)
    torch.testing.assert_close(masks.sum(1), torch.ones(4, 1, H, W))


def test_make_viz_writes_figures_and_index(tmp_path):
    index = make_viz(StandIn(), None, _scenes(6), tmp_path, num_images=5, scale=2)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == [f"image_{i}.png" for i in range(5)]
    text = index.read_text()
    assert all(f'src="{p}"' in text for p in pngs) and "FG-ARI" in text and "KL" in text
    with Image.open(tmp_path / "image_0.png") as im:
        # 2 stages × (input, recon, 4 slots × mask/component/attention) at 24 px × 2
        assert im.size == (72 + (2 + 3 * K) * (48 + 2) + 2, 2 * 13 + 4 + 2 * (48 + 2) + 2)


def test_make_gifs_traverses_the_active_dims(tmp_path):
    result = make_gifs(StandIn(), None, _scenes(8), tmp_path, num_images=8, top_k=3, frames=5, scale=1)
    assert len(result["dims"]) == 3 and 7 not in result["dims"]  # dim 7 never reaches the picture
    assert result["activeness"][7] == 0.0
    names = sorted(p.name for p in tmp_path.glob("*.gif"))
    assert names == sorted(f"slot_{k}_row_{r}.gif" for k in range(K) for r in range(3))
    assert [p.name for p in result["gifs"]][:3] == ["slot_0_row_0.gif", "slot_0_row_1.gif", "slot_0_row_2.gif"]
    frames = iio.imread(result["gifs"][0], index=None)
    assert frames.shape[1:] == (H, W, 3) and 1 <= frames.shape[0] <= 5
    with Image.open(result["sheet"]) as im:
        assert im.size == (72 + 5 * (W + 2) + 2, K * 3 * (H + 2) + 2)


def test_composite_renderer_matches_the_forward_reconstruction():
    model = StandIn()
    images = _scenes(4)[0]["imgs"]
    out = model(images)
    torch.testing.assert_close(composite_renderer(model)(out.posterior_loc), out.reconstruction)


def test_the_real_model_runs_through_every_pipeline(tmp_path):
    from emorl_cli.config import ModelConfig
    from emorl_cli.model import Objective, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(
        K=4, z_size=8, input_size=(3, H, W), stochastic_layers=2, refinement_iters=1, image_decoder="small"
    )
    model = build_model(cfg).eval()
    batches = _scenes(4)
    records = evaluate_ari(model, Objective.elbo(), batches)
    assert len(records) == 4 and all(r["kl"] is not None and math.isfinite(r["mse"]) for r in records)
    assert all(math.isfinite(r["slot_spread"]) for r in records)
    make_viz(model, Objective.elbo(), batches, tmp_path / "viz", num_images=1)
    with Image.open(tmp_path / "viz" / "image_0.png") as im:
        assert im.size[1] == 2 * 13 + 4 + 3 * (96 + 2) + 2  # rows: layer 1, layer 2, refine 1
    result = make_gifs(model, Objective.elbo(), batches, tmp_path / "gifs", num_images=4, top_k=2, frames=3)
    assert len(result["gifs"]) == 4 * 2


@pytest.mark.parametrize("gain, alike", [(0.02, True), (1.0, False)])
def test_slot_spread_tells_alike_slots_from_distinct_ones(gain, alike):
    """At the paper's init (gain 0.02) the image is invisible to the slots, so they end up with the same
    posterior; at gain 1 they read the image differently from the first step."""
    from emorl_cli.config import ModelConfig
    from emorl_cli.model import Objective, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(K=4, z_size=8, input_size=(3, H, W), refinement_iters=1, image_decoder="small", init_gain=gain)
    records = evaluate_ari(build_model(cfg).eval(), Objective.elbo(), _scenes(4))
    spreads = [r["slot_spread"] for r in records]
    assert all(s < 1e-3 for s in spreads) if alike else all(s > 0.02 for s in spreads)
