"""The .h5 reader: real fixtures, CLEVR crop, batched fast path, DataLoader, and every bad-input error."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from emorl_cli.cli.app import app
from emorl_cli.config import DataConfig
from emorl_cli.data.dataset import H5Dataset, make_dataloader, measure_loader_throughput, open_split
from emorl_cli.data.synth import synthesize
from emorl_cli.errors import DataError

FIXTURES = Path(__file__).parent / "data" / "fixtures"
REAL10 = FIXTURES / "tetrominoes_real10_test.h5"
IODINE = FIXTURES / "tetrominoes_iodine_mini_test.h5"
runner = CliRunner()


def tetro_cfg(**kw) -> DataConfig:
    base = dict(
        dataset="tetrominoes",
        data_dir=FIXTURES,
        train_file="tetrominoes.h5",
        test_file="tetrominoes_real10_test.h5",
        image_size=35,
    )
    return DataConfig(**{**base, **kw})


def write_h5(path: Path, split: str = "test", **arrays: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        g = f.create_group(split)
        for key, value in arrays.items():
            g.create_dataset(key, data=value)
    return path


def small_arrays(n: int = 4, size: int = 35, entities: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    masks = np.zeros((n, entities, size, size, 1), np.uint8)
    masks[:, 0] = 255
    return {"imgs": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), "masks": masks}


# --------------------------------------------------------------------------------------------- real data


@pytest.mark.parametrize("in_memory", [True, False])
def test_reads_real_fixtures_with_documented_item_layout(in_memory):
    ds = open_split(tetro_cfg(in_memory=in_memory), "test")
    assert len(ds) == 10 and ds.in_memory is in_memory
    item = ds[3]
    assert set(item) == {"imgs", "masks", "index"} and item["index"] == 3
    assert item["imgs"].shape == (3, 35, 35) and item["imgs"].dtype == torch.float32
    assert item["imgs"].is_contiguous() and item["masks"].is_contiguous()
    assert item["masks"].shape == (4, 1, 35, 35) and item["masks"].dtype == torch.float32
    assert set(torch.unique(item["masks"]).tolist()) == {0.0, 255.0}  # stored 0/255, not rescaled
    with h5py.File(REAL10) as f:
        raw_img, raw_masks = f["test/imgs"][3], f["test/masks"][3]
    # exactly the original's (img / 255.) * 2 - 1 computed in float64, then float32
    expected = ((np.transpose(raw_img, (2, 0, 1)) / 255.0) * 2 - 1).astype(np.float32)
    assert np.array_equal(item["imgs"].numpy(), expected)
    assert np.array_equal(item["masks"].numpy(), np.transpose(raw_masks, (0, 3, 1, 2)).astype(np.float32))


def test_factors_when_asked():
    cfg = tetro_cfg(test_file=IODINE.name, load_factors=True)
    item = open_split(cfg, "test")[2]
    assert item["factors"].shape == (4, 7) and item["factors"].dtype == torch.float32
    with h5py.File(IODINE) as f:
        assert np.array_equal(item["factors"].numpy(), f["test/factors"][2])
    with pytest.raises(DataError, match="no dataset 'test/factors'.*load_factors"):
        open_split(tetro_cfg(load_factors=True), "test")


@pytest.mark.parametrize("in_memory", [True, False])
def test_get_batch_matches_items_in_any_order(in_memory):
    ds = H5Dataset(REAL10, "test", image_size=35, in_memory=in_memory)
    idx = [7, 2, 2, 9, 0]
    batch = ds.get_batch(idx)
    assert batch["imgs"].shape == (5, 3, 35, 35) and batch["masks"].shape == (5, 4, 1, 35, 35)
    assert batch["index"].tolist() == idx
    for j, i in enumerate(idx):
        assert torch.equal(batch["imgs"][j], ds[i]["imgs"]) and torch.equal(batch["masks"][j], ds[i]["masks"])
    assert torch.equal(ds[-1]["imgs"], ds[9]["imgs"])
    with pytest.raises(IndexError):
        ds[10]


def test_dataloader_batches_cover_every_sample_once_and_plain_collate_agrees():
    ds = H5Dataset(REAL10, "test", image_size=35)
    loader = make_dataloader(ds, 4, shuffle=True, seed=1)
    batches = list(loader)
    assert [b["imgs"].shape[0] for b in batches] == [4, 4, 2]
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(10))
    assert [b["index"].tolist() for b in make_dataloader(ds, 4, seed=1)] == [b["index"].tolist() for b in batches]
    plain = next(iter(DataLoader(ds, batch_size=3)))  # torch's default collate still works
    fast = ds.get_batch([0, 1, 2])
    assert torch.equal(plain["imgs"], fast["imgs"]) and plain["index"].tolist() == [0, 1, 2]


def test_workers_open_the_file_themselves_and_read_disjoint_samples(tmp_path):
    synthesize("tetrominoes", tmp_path, 0, 64, seed=2)
    ds = H5Dataset(tmp_path / "tetrominoes_test.h5", "test", in_memory=False)
    assert ds._h5 is None  # nothing opened in the parent by construction
    loader = make_dataloader(ds, 8, shuffle=False, num_workers=2)
    seen = torch.cat([b["index"] for b in loader]).tolist()
    assert sorted(seen) == list(range(64))
    assert ds._h5 is None  # the parent never opened a handle the workers could inherit


def test_loader_throughput_for_tetrominoes(tmp_path):
    synthesize("tetrominoes", tmp_path, 4000, 0, seed=0)
    rate = measure_loader_throughput(tmp_path / "tetrominoes.h5", "train", 32, 100)
    assert rate >= 10_000, rate


# --------------------------------------------------------------------------------------------- CLEVR


@pytest.fixture()
def fake_clevr(tmp_path) -> Path:
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (3, 240, 320, 3), dtype=np.uint8)
    masks = np.zeros((3, 11, 240, 320, 1), np.uint8)
    masks[:, 0] = 255
    masks[:, 1, 100:140, 150:200] = 255
    masks[:, 0, 100:140, 150:200] = 0
    return write_h5(tmp_path / "clevr6_with_masks_and_factors_test.h5", imgs=imgs, masks=masks)


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("size", [96, 128])
def test_clevr_crop_resizes_images_and_crops_masks(fake_clevr, in_memory, size):
    cfg = DataConfig(
        dataset="clevr6",
        data_dir=fake_clevr.parent,
        train_file="x.h5",
        test_file=fake_clevr.name,
        image_size=size,
        clevr_crop=True,
        in_memory=in_memory,
    )
    ds = open_split(cfg, "test")
    item = ds[1]
    assert item["imgs"].shape == (3, size, size) and item["masks"].shape == (11, 1, 192, 192)
    with h5py.File(fake_clevr) as f:
        raw_img, raw_masks = f["test/imgs"][1], f["test/masks"][1]
    pil = Image.fromarray(raw_img).crop((64, 29, 256, 221)).resize((size, size), Image.Resampling.BICUBIC)
    expected = ((np.transpose(np.asarray(pil), (2, 0, 1)) / 255.0) * 2 - 1).astype(np.float32)
    assert np.array_equal(item["imgs"].numpy(), expected)
    assert np.array_equal(item["masks"][:, 0].numpy(), raw_masks[:, 29:221, 64:256, 0].astype(np.float32))
    assert ds.mask_hw == (192, 192)


def test_clevr_without_crop_says_how_to_fix(fake_clevr):
    with pytest.raises(DataError, match=r"240x320 images but data.image_size is 96; for CLEVR set data.clevr_crop"):
        H5Dataset(fake_clevr, "test", image_size=96)
    with pytest.raises(DataError, match="too small for the CLEVR crop"):
        H5Dataset(REAL10, "test", image_size=96, clevr_crop=True)


# --------------------------------------------------------------------------------------------- bad input


def test_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as info:
        open_split(tetro_cfg(data_dir=tmp_path), "train")
    text = str(info.value)
    assert str(tmp_path / "tetrominoes.h5") in text and "does not exist" in text
    assert "emorl data fetch --zenodo" in text and "emorl data synth tetrominoes" in text


def test_not_hdf5_and_truncated(tmp_path):
    junk = tmp_path / "tetrominoes_test.h5"
    junk.write_bytes(b"<html>not found</html>" * 20)
    with pytest.raises(DataError, match=f"{junk} is not an HDF5 file"):
        H5Dataset(junk, "test")
    cut = tmp_path / "cut.h5"
    data = REAL10.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{cut} is truncated \(143,115 of 286,230 bytes\)"):
        H5Dataset(cut, "test")


def test_missing_group_names_the_groups_and_the_right_file():
    with pytest.raises(DataError, match=r"has no group 'train' \(groups: test\)") as info:
        open_split(tetro_cfg(train_file=REAL10.name), "train")
    assert str(REAL10) in str(info.value)


def test_missing_datasets(tmp_path):
    arrays = small_arrays()
    no_imgs = write_h5(tmp_path / "a.h5", masks=arrays["masks"])
    with pytest.raises(DataError, match=f"{no_imgs} has no dataset 'test/imgs'"):
        H5Dataset(no_imgs, "test")
    no_masks = write_h5(tmp_path / "b.h5", imgs=arrays["imgs"])
    with pytest.raises(DataError, match="has no dataset 'test/masks'.*load_masks=false"):
        H5Dataset(no_masks, "test")
    assert len(H5Dataset(no_masks, "test", load_masks=False)) == 4
    bad_shape = write_h5(tmp_path / "c.h5", imgs=arrays["imgs"], masks=arrays["masks"][:, :, :30])
    with pytest.raises(DataError, match=r"'test/masks' has shape \[4, 4, 30, 35, 1\]"):
        H5Dataset(bad_shape, "test")


def test_image_size_differs_from_config():
    with pytest.raises(
        DataError, match=rf"{REAL10} holds 35x35 images but data.image_size is 64; set data.image_size=35"
    ):
        open_split(tetro_cfg(image_size=64), "test")


@pytest.mark.parametrize("in_memory", [True, False])
def test_masks_other_than_0_255(tmp_path, in_memory):
    arrays = small_arrays()
    arrays["masks"][2, 1, 5, 5, 0] = 1
    path = write_h5(tmp_path / "m.h5", **arrays)
    with pytest.raises(DataError, match=rf"{path}: 'test/masks' holds values other than 0 and 255 \(e.g. 1\)"):
        H5Dataset(path, "test", in_memory=in_memory)


def test_empty_split(tmp_path):
    path = write_h5(tmp_path / "e.h5", **small_arrays(n=0))
    with pytest.raises(DataError, match=f"{path}: split 'test' is empty"):
        H5Dataset(path, "test")


def test_bad_file_in_cli_is_one_red_line(tmp_path):
    junk = tmp_path / "x.h5"
    junk.write_bytes(b"nope")
    result = runner.invoke(app, ["data", "info", str(junk)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "not an HDF5 file" in lines[0]


def test_memory_budget_falls_back_to_disk(tmp_path):
    path = shutil.copy(REAL10, tmp_path / "t.h5")
    ds = H5Dataset(path, "test", memory_limit_bytes=1000)
    assert not ds.in_memory and torch.equal(ds[4]["imgs"], H5Dataset(path, "test")[4]["imgs"])
