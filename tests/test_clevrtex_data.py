"""The ClevrTex reader on a fixture in the published folder layout that the tests write themselves.

Oracles: the split bounds and crop box of the reference reader (clevrtex_eval.py) written out by hand; torch's
antialiased bilinear interpolation for the image resize (PIL's filter, up to rounding); numpy indexing for the
nearest-neighbour mask resize; the stored label maps for the one-hot masks.
"""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from clevrtex_fixture import read_labels, write_variant
from PIL import Image

from emorl_cli.config import load_config
from emorl_cli.data import clevrtex as reader
from emorl_cli.data.clevrtex import (
    ClevrTexDataset,
    center_crop_box,
    labels_to_masks,
    load_image,
    load_labels,
    split_range,
)
from emorl_cli.data.dataset import make_dataloader, open_split
from emorl_cli.errors import ConfigError, DataError
from emorl_cli.evaluate.session import open_eval_split


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clevrtex")
    write_variant(folder, "full", 20, per_folder=4, seed=0)
    write_variant(folder, "outd", 6, per_folder=3, seed=1, mask_mode="L")
    return folder


def image_number(dataset: ClevrTexDataset, item: int) -> int:
    """Which stored image a split item decodes to (by comparing pixels with every stored image)."""
    wanted = dataset.get_batch([item])["imgs"][0]
    for number, path in enumerate(dataset.index.images):
        pixels = torch.from_numpy(load_image(path, dataset.image_hw[0])).permute(2, 0, 1).float()
        if torch.allclose(pixels / 255 * 2 - 1, wanted, atol=1e-6):
            return number
    raise AssertionError("no stored image matches")


def test_splits_are_the_reference_fractions_of_the_index(root):
    assert split_range(20, "test", "full") == range(0, 2)
    assert split_range(20, "val", "full") == range(2, 4)
    assert split_range(20, "train", "full") == range(4, 20)
    assert split_range(23, "test", "camo") == range(0, 2)  # int(2.3)
    assert split_range(23, "val", "camo") == range(2, 4)  # int(4.6)
    assert split_range(23, "train", "camo") == range(4, 23)
    assert split_range(6, "test", "outd") == range(0, 6)
    with pytest.raises(DataError, match="outd is a test set only"):
        split_range(6, "train", "outd")
    with pytest.raises(DataError, match="split must be one of"):
        split_range(6, "validation", "full")


def test_images_in_numbered_subfolders_are_indexed_by_number_and_aux_renders_ignored(root):
    test = ClevrTexDataset(root, "full", "test", image_size=64)
    train = ClevrTexDataset(root / "clevrtex_full", "full", "train", image_size=64)  # the variant folder itself
    assert len(test) == 2 and len(train) == 16
    assert len(test.index) == 20 and all("_depth" not in p.name for p in test.index.images)
    assert [image_number(test, i) for i in range(2)] == [0, 1]
    assert image_number(train, 0) == 4 and image_number(train, 15) == 19
    outd = ClevrTexDataset(root, "outd", "test", image_size=64)
    assert len(outd) == 6


def test_crop_box_is_the_centred_square_of_0_8_times_the_short_side():
    assert center_crop_box(320, 240) == (64, 24, 256, 216)
    assert center_crop_box(240, 320) == (24, 64, 216, 256)
    assert center_crop_box(100, 100) == (10, 10, 90, 90)


def test_image_is_cropped_then_resized_bilinearly(root):
    path = next((root / "clevrtex_full").glob("**/CLEVRTEX_full_000003.png"))
    rgba = np.asarray(Image.open(path))
    crop = torch.from_numpy(rgba[24:216, 64:256, :3].copy()).permute(2, 0, 1)[None].double()  # [1, 3, 192, 192]
    expected = torch.nn.functional.interpolate(crop, size=(128, 128), mode="bilinear", antialias=True)
    expected = expected[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
    got = load_image(path, 128)
    assert got.shape == (128, 128, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # PIL's fixed-point rounding


@pytest.mark.parametrize("variant", ["full", "outd"])  # palette ("P") and greyscale ("L") masks
def test_masks_are_cropped_resized_nearest_and_one_hot(root, variant):
    stored = read_labels(root / f"clevrtex_{variant}", variant, 2)  # [240, 320]
    crop = stored[24:216, 64:256]
    src = np.minimum(((np.arange(128) + 0.5) * 1.5).astype(int), 191)  # PIL's nearest: floor((x + 0.5) * scale)
    expected = crop[src][:, src]
    path = next((root / f"clevrtex_{variant}").glob(f"**/CLEVRTEX_{variant}_000002_flat.png"))
    labels = load_labels(path, 128)
    np.testing.assert_array_equal(labels, expected)
    masks = labels_to_masks(labels[None])  # [1, 11, 128, 128, 1]
    assert masks.shape == (1, 11, 128, 128, 1)
    for entity in range(11):
        np.testing.assert_array_equal(masks[0, entity, ..., 0], np.where(labels == entity, 255, 0))


def test_batches_have_the_h5_layout(root):
    dataset = ClevrTexDataset(root, "full", "test", image_size=32)
    batch = dataset.get_batch([1, 0])
    assert batch["imgs"].shape == (2, 3, 32, 32) and batch["imgs"].dtype == torch.float32
    assert -1.0 <= float(batch["imgs"].min()) and float(batch["imgs"].max()) <= 1.0
    assert batch["masks"].shape == (2, 11, 1, 32, 32)
    assert set(batch["masks"].unique().tolist()) <= {0.0, 255.0}
    assert torch.equal(batch["masks"].sum(dim=1), torch.full((2, 1, 32, 32), 255.0))  # one entity per pixel
    assert batch["masks"][:, 1:].amax(dim=(1, 2, 3, 4)).tolist() == [255.0, 255.0]  # objects are there
    assert batch["index"].tolist() == [1, 0]
    item = dataset[1]
    assert torch.equal(item["imgs"], batch["imgs"][0]) and item["index"] == 1
    loader = make_dataloader(dataset, batch_size=2, shuffle=False)
    assert torch.equal(next(iter(loader))["masks"], dataset.get_batch([0, 1])["masks"])


def test_decoded_images_are_kept_in_the_main_process_only(root, monkeypatch):
    calls = []
    real = reader.load_image
    monkeypatch.setattr(reader, "load_image", lambda path, size: calls.append(path) or real(path, size))
    dataset = ClevrTexDataset(root, "full", "test", image_size=32)
    first = dataset.get_batch([0, 1])
    again = dataset.get_batch([1, 0])
    assert len(calls) == 2  # the second batch decoded nothing
    assert torch.equal(again["imgs"], first["imgs"].flip(0)) and torch.equal(again["masks"], first["masks"].flip(0))
    copy = pickle.loads(pickle.dumps(dataset))  # what a DataLoader worker receives
    assert copy._cached is None
    uncached = ClevrTexDataset(root, "full", "test", image_size=32, in_memory=False)
    uncached.get_batch([0])
    uncached.get_batch([0])
    assert len(calls) == 4


def test_config_opens_clevrtex_through_open_split(root):
    cfg = load_config("clevrtex", ["data.image_size=32", "model.input_size=[3,32,32]"])
    train = open_split(cfg.data, "train", root, load_masks=False)
    assert isinstance(train, ClevrTexDataset) and len(train) == 16 and "masks" not in train.get_batch([0])
    test = open_eval_split(cfg, data_dir=root)
    assert len(test) == 2 and test.get_batch([0])["masks"].shape == (1, 11, 1, 32, 32)
    outd = open_eval_split(cfg, data_file=root / "clevrtex_outd")  # --data picks the variant by folder name
    assert outd.variant == "outd" and len(outd) == 6
    with pytest.raises(DataError, match="no ground-truth factor"):
        open_eval_split(cfg, data_dir=root, load_factors=True)


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ("data.test_file=clevrtex_nope", "no ClevrTex variant folder"),
        ("data.train_file=clevrtex_outd", "outd is a test set only"),
        ("data.clevr_crop=true", "ClevrTex has its own centre crop"),
    ],
)
def test_config_refuses_what_clevrtex_cannot_be(override, phrase):
    with pytest.raises(ConfigError, match=phrase):
        load_config("clevrtex", [override])


def test_shipped_config_has_the_original_values():
    """configs/clevrtex.yaml against the original configs/train/clevrtex/EMORL.json and its test config."""
    cfg = load_config("clevrtex")
    model, geco, training = cfg.model, cfg.geco, cfg.training
    assert (model.K, model.z_size, model.input_size, model.stochastic_layers) == (11, 64, (3, 128, 128), 3)
    assert (model.image_likelihood, model.image_decoder, model.log_scale) == ("gmm", "iodine", -2.3025859)
    assert (model.bottom_up_prior, model.reverse_prior_plusplus, model.use_dual_gru) == (False, True, True)
    assert (geco.enabled, geco.target, geco.step_size_acceleration) == (True, -1.5, 5.0)
    assert (geco.ema_alpha, geco.beta_step_size) == (0.99, 1e-6)
    assert (training.batch_size, training.iters, training.lr, training.kl_beta) == (32, 300_000, 4e-4, 1.0)
    assert training.refinement_curriculum == [(-1, 3), (100_000, 2), (200_000, 2)]
    assert (training.clip_grad_norm, training.checkpoint_every, training.seed) == (5.0, 25_000, 1)
    assert cfg.test_refinement_iters() == 2 and cfg.eval.num_images >= 100_000
    assert (cfg.data.image_size, cfg.data.train_file, cfg.data.test_file) == (128, "clevrtex_full", "clevrtex_full")


def test_incomplete_folders_are_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="emorl data fetch --clevrtex --variant camo"):
        ClevrTexDataset(tmp_path, "camo", "test")
    (tmp_path / "clevrtex_camo").mkdir()
    with pytest.raises(DataError, match="holds no ClevrTex images"):
        ClevrTexDataset(tmp_path, "camo", "test")
    folder = write_variant(tmp_path, "pbg", 6, per_folder=6)
    next(folder.glob("**/CLEVRTEX_pbg_000003_flat.png")).unlink()
    with pytest.raises(DataError, match="has no mask CLEVRTEX_pbg_000003_flat.png"):
        ClevrTexDataset(tmp_path, "pbg", "test")
    folder = write_variant(tmp_path, "vbg", 6, per_folder=6)
    for path in folder.glob("**/CLEVRTEX_vbg_000002*"):
        path.unlink()
    with pytest.raises(DataError, match=r"lacks 1 of the ClevrTex images numbered 0..5 \(2\)"):
        ClevrTexDataset(tmp_path, "vbg", "test")
    shutil.copytree(folder / "0", folder / "copy")
    with pytest.raises(DataError, match="appears twice"):
        ClevrTexDataset(tmp_path, "vbg", "test")


def test_masks_that_are_no_clevrtex_label_maps_are_refused(tmp_path):
    labels = np.zeros((240, 320), np.uint8)
    labels[100:120, 100:140] = 11
    Image.fromarray(labels, "L").save(tmp_path / "eleven.png")
    with pytest.raises(DataError, match="holds label 11"):
        load_labels(tmp_path / "eleven.png", 64)
    Image.fromarray(np.zeros((240, 320, 3), np.uint8), "RGB").save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="one-channel label images"):
        load_labels(tmp_path / "rgb.png", 64)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="cannot read .*broken.png"):
        load_image(tmp_path / "broken.png", 64)
