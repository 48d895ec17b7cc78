"""`emorl data import`: pictures (+ label masks) → .h5, then `emorl train custom` and `emorl viz` on it.

Oracles: Pillow's own crop-then-resize (bicubic for images, NEAREST on 32-bit label images for masks),
hashlib for the manifest's md5, and the source label masks for the one-hot layout.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import set_options
from PIL import Image

from emorl_cli.data.folder_import import (
    import_folder,
    one_hot_masks,
    prepare_image,
    prepare_labels,
    split_indices,
)
from emorl_cli.data.h5 import read_layout
from emorl_cli.data.registry import MANIFEST_NAME

# Sizes (width, height) of the generated pictures: landscape, portrait, square, smaller than S.
SIZES = [(48, 30), (30, 52), (40, 40), (20, 14), (61, 37)]


def write_pictures(root: Path, count: int = 20, seed: int = 0, masks: bool = True) -> tuple[Path, Path]:
    """`count` PNG pictures of various sizes with 1-3 coloured rectangles each, and their label masks whose
    object ids are sparse (10, 20, …) so the import has to renumber them."""
    rng = np.random.default_rng(seed)
    images, labels = root / "pictures", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        img = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
        lab = np.zeros((h, w), np.uint8)
        for o in range(1 + i % 3):
            y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
            img[y : y + 8, x : x + 8] = rng.integers(80, 256, 3)
            lab[y : y + 8, x : x + 8] = 10 * (o + 1)
        Image.fromarray(img).save(images / f"pic_{i:02d}.png")
        if masks:
            Image.fromarray(lab).save(labels / f"pic_{i:02d}.png")
    return images, labels


def no_leftovers(folder: Path) -> list[str]:
    """Names in `folder` that an aborted write could have left (temporary files, .h5 files)."""
    return sorted(p.name for p in folder.glob("*") if p.suffix in (".tmp", ".h5")) if folder.exists() else []


# ------------------------------------------------------------------------------------------------ pixels


@pytest.mark.parametrize("size", [(48, 30), (30, 52), (9, 9)])
def test_image_is_centre_cropped_and_resized_like_pillow(size):
    rng = np.random.default_rng(1)
    w, h = size
    array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    oracle = Image.fromarray(np.ascontiguousarray(array[top : top + side, left : left + side]))
    expected = np.asarray(oracle.resize((16, 16), Image.Resampling.BICUBIC))
    got = prepare_image(Image.fromarray(array), 16)
    assert got.dtype == np.uint8 and got.shape == (16, 16, 3)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("size", "out"), [((48, 30), 16), ((30, 52), 40), ((17, 17), 5)])
def test_labels_are_resized_nearest_like_pillow_and_renumbered_in_order(size, out):
    rng = np.random.default_rng(2)
    w, h = size
    labels = rng.choice(np.array([0, 7, 300, 12]), size=(h, w))
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(labels[top : top + side, left : left + side].astype(np.int32), mode="I")
    nearest = np.asarray(crop.resize((out, out), Image.Resampling.NEAREST)).astype(np.int64)  # Pillow's nearest
    got = prepare_labels(labels, out)
    assert got.shape == (out, out)
    present = sorted(set(np.unique(nearest).tolist()) - {0})
    renumber = {0: 0, **{value: rank + 1 for rank, value in enumerate(present)}}
    np.testing.assert_array_equal(got, np.vectorize(renumber.get)(nearest))


def test_labels_without_background_start_at_one():
    got = prepare_labels(np.array([[5, 9], [9, 5]]), 2)
    np.testing.assert_array_equal(got, [[1, 2], [2, 1]])


def test_one_hot_masks_mark_each_pixel_once():
    labels = np.array([[[0, 1], [2, 2]], [[0, 0], [0, 1]]], np.uint16)
    masks = one_hot_masks(labels, 3)
    assert masks.shape == (2, 3, 2, 2, 1) and masks.dtype == np.uint8
    assert set(np.unique(masks).tolist()) == {0, 255}
    np.testing.assert_array_equal(masks.sum(axis=1, dtype=np.int64)[..., 0], np.full((2, 2, 2), 255))
    np.testing.assert_array_equal(masks[:, :, :, :, 0].argmax(axis=1), labels)


def test_split_is_seeded_disjoint_and_covers_everything():
    train, test = split_indices(20, 0.25, seed=3)
    again_train, again_test = split_indices(20, 0.25, seed=3)
    assert len(test) == 5 and len(train) == 15
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(20))
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(test, again_test)
    others = [split_indices(20, 0.25, seed=s)[1].tolist() for s in range(4, 8)]
    assert any(o != test.tolist() for o in others)
    assert [len(split_indices(3, f, 0)[1]) for f in (0.01, 0.5, 0.99)] == [1, 2, 2]  # ≥ 1 on each side


# ------------------------------------------------------------------------------------------------ files


def test_import_writes_both_splits_in_the_layout_with_a_manifest(tmp_path):
    images, labels = write_pictures(tmp_path)
    out = tmp_path / "data" / "mine.h5"
    result = import_folder(images, out, size=24, masks=labels, test_fraction=0.25, seed=5)
    assert len(result.train_names) == 15 and len(result.test_names) == 5
    assert sorted(result.train_names + result.test_names) == [f"pic_{i:02d}" for i in range(20)]
    assert result.entities == 4  # at most 3 objects in one picture, + background
    with h5py.File(out, "r") as handle:
        for split, names in (("train", result.train_names), ("test", result.test_names)):
            layout = read_layout(handle, out, split, need_masks=True)
            assert (layout.num_images, layout.image_hw, layout.mask_entities) == (len(names), (24, 24), 4)
            assert handle[split]["imgs"].dtype == np.uint8
            assert [n.decode() for n in handle[split]["names"][()]] == names
            masks = handle[split]["masks"][()]
            assert set(np.unique(masks).tolist()) == {0, 255}
            np.testing.assert_array_equal(masks.sum(axis=1, dtype=np.int64), np.full((len(names), 24, 24, 1), 255))
        # one picture checked against its source, pixel for pixel
        name = result.test_names[0]
        source = Image.open(images / f"{name}.png")
        np.testing.assert_array_equal(handle["test"]["imgs"][0], prepare_image(source, 24))
        source_labels = np.asarray(Image.open(labels / f"{name}.png")).astype(np.int64)
        stored = handle["test"]["masks"][0, :, :, :, 0].argmax(axis=0)
        np.testing.assert_array_equal(stored, prepare_labels(source_labels, 24))
        assert handle.attrs["entities"] == 4 and handle.attrs["image_size"] == 24
    manifest = json.loads((out.parent / MANIFEST_NAME).read_text())
    entry = manifest["files"]["mine.h5"]
    assert entry["size"] == out.stat().st_size
    assert entry["md5"] == hashlib.md5(out.read_bytes()).hexdigest()


def test_import_is_deterministic_for_a_seed(tmp_path):
    images, _ = write_pictures(tmp_path, masks=False)
    a = import_folder(images, tmp_path / "a.h5", size=16, test_fraction=0.3, seed=1)
    b = import_folder(images, tmp_path / "b.h5", size=16, test_fraction=0.3, seed=1)
    assert (a.train_names, a.test_names) == (b.train_names, b.test_names)
    with h5py.File(a.path, "r") as fa, h5py.File(b.path, "r") as fb:
        np.testing.assert_array_equal(fa["train"]["imgs"][()], fb["train"]["imgs"][()])
        assert "masks" not in fa["train"] and a.entities is None


def test_jpeg_rgba_and_grayscale_pictures_are_read(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / "a.JPG", quality=95)
    Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), mode="RGBA").save(folder / "b.png")
    Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8), mode="L").save(folder / "c.jpeg")
    (folder / "notes.txt").write_text("not a picture")
    result = import_folder(folder, tmp_path / "out.h5", size=8, test_fraction=0.5)
    assert sorted(result.train_names + result.test_names) == ["a", "b", "c"]
    assert result.ignored == ["notes.txt"]


# ------------------------------------------------------------------------------------------------ errors


def _unreadable(images: Path, labels: Path) -> None:
    (images / "pic_03.png").write_bytes(b"not a png at all")


def _orphan_mask(images: Path, labels: Path) -> None:
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(labels / "stray.png")


def _missing_mask(images: Path, labels: Path) -> None:
    (labels / "pic_04.png").unlink()


def _wrong_mask_size(images: Path, labels: Path) -> None:
    Image.fromarray(np.zeros((31, 48), np.uint8)).save(labels / "pic_05.png")  # its image is 48x30


def _colour_mask(images: Path, labels: Path) -> None:
    Image.fromarray(
        np.dstack([np.zeros((30, 48), np.uint8), np.ones((30, 48), np.uint8), np.zeros((30, 48), np.uint8)])
    ).save(labels / "pic_00.png")


def _jpeg_mask(images: Path, labels: Path) -> None:
    (labels / "pic_00.png").rename(labels / "pic_00.jpg")


@pytest.mark.parametrize(
    ("spoil", "extra", "phrase"),
    [
        (_unreadable, [], "cannot read image"),
        (_orphan_mask, [], "have no image of the same name: stray.png"),
        (_missing_mask, [], "have no mask in"),
        (_wrong_mask_size, [], "is 48x31 pixels but its image pic_05.png is 48x30"),
        (_colour_mask, [], "is a colour image"),
        (_jpeg_mask, [], "is a JPEG"),
        (None, ["--size", "0"], "--size must be at least 1 (pixels per side"),
        (None, ["--size", "-3"], "got -3"),
        (None, ["--split-test", "0"], "strictly between 0 and 1; got 0.0"),
        (None, ["--split-test", "1"], "strictly between 0 and 1; got 1.0"),
        (None, ["--split-test", "1.5"], "got 1.5"),
    ],
)
def test_bad_input_is_one_clear_line_and_nothing_is_written(cli, tmp_path, spoil, extra, phrase):
    images, labels = write_pictures(tmp_path, count=8)
    if spoil is not None:
        spoil(images, labels)
    out = tmp_path / "data" / "out.h5"
    result = cli("data", "import", images, "--out", out, "--masks", labels, "--size", "16", *extra)
    assert result.exit_code == 1, result.output
    assert phrase in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and no_leftovers(out.parent) == []


def test_empty_or_missing_folder_is_an_error(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    result = cli("data", "import", tmp_path / "empty", "--out", tmp_path / "o.h5")
    assert result.exit_code == 1 and "no PNG or JPEG images in" in result.output and "readme.md" in result.output
    result = cli("data", "import", tmp_path / "nowhere", "--out", tmp_path / "o.h5")
    assert result.exit_code == 1 and "does not exist" in result.output


def test_existing_output_needs_force(cli, tmp_path):
    images, _ = write_pictures(tmp_path, count=4, masks=False)
    out = tmp_path / "o.h5"
    assert cli("data", "import", images, "--out", out, "--size", "8").exit_code == 0
    before = out.read_bytes()
    again = cli("data", "import", images, "--out", out, "--size", "12")
    assert again.exit_code == 1 and "--force" in again.output
    assert out.read_bytes() == before
    assert cli("data", "import", images, "--out", out, "--size", "12", "--force").exit_code == 0
    with h5py.File(out, "r") as handle:
        assert handle["train"]["imgs"].shape[1:] == (12, 12, 3)


def test_a_folder_held_by_another_emorl_process_is_refused_and_left_alone(cli, tmp_path):
    from emorl_cli.locks import lock_folder

    images, _ = write_pictures(tmp_path, count=4, masks=False)
    out = tmp_path / "data" / "o.h5"
    with lock_folder(out.parent, "emorl data fetch", advice="wait"):  # a second open file: refused like a process
        result = cli("data", "import", images, "--out", out, "--size", "8")
    assert result.exit_code == 1, result.output
    assert "is in use by another emorl process" in result.output and "`emorl data fetch`" in result.output
    assert not out.exists() and not (out.parent / MANIFEST_NAME).exists()
    assert cli("data", "import", images, "--out", out, "--size", "8").exit_code == 0  # released: it works
    assert sorted(p.name for p in out.parent.iterdir()) == [MANIFEST_NAME, "o.h5"]  # the lock file is gone


# ------------------------------------------------------------------------------------------------ end to end

# A very small EfficientMORL so that a few training steps take seconds on a CPU.
TINY_CUSTOM = [
    "data.image_size=16",
    "model.input_size=[3,16,16]",
    "model.z_size=8",
    "model.K=4",
    "model.refinement_iters=0",
    "training.refinement_curriculum=[[-1, 0]]",
    "training.batch_size=2",
    "training.iters=3",
    "training.warmup=1",
    "training.checkpoint_every=3",
    "training.log_every=1",
    "eval.batch_size=8",
]


def test_twenty_pictures_to_a_trained_model_and_its_pictures(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images, labels = write_pictures(tmp_path, count=20)
    imported = cli(
        "data", "import", images, "--out", "data/custom.h5", "--size", "16", "--masks", labels, "--split-test", "0.25"
    )
    assert imported.exit_code == 0, imported.output
    assert "15 training and 5 test images of 16x16" in imported.output
    assert "model.K must be at least 4" in imported.output
    assert "emorl train custom" in imported.output

    trained = cli("train", "custom", "--out", "run", "--cpu", *set_options(*TINY_CUSTOM))
    assert trained.exit_code == 0, trained.output
    checkpoint = tmp_path / "run" / "checkpoints" / "step_0000003.pt"
    assert checkpoint.is_file()

    drawn = cli("viz", "--checkpoint", checkpoint, "--out", "viz", "--num-images", "3")
    assert drawn.exit_code == 0, drawn.output
    assert sorted(p.name for p in (tmp_path / "viz").glob("image_*.png")) == [
        "image_0.png",
        "image_1.png",
        "image_2.png",
    ]
    assert "FG-ARI" in (tmp_path / "viz" / "index.html").read_text()

    scored = cli("eval", "ari", "--checkpoint", checkpoint, "--out", "eval")
    assert scored.exit_code == 0, scored.output
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert (
        results["num_images"] == 5 and results["metrics"]["fg_ari"]["n"] + results["metrics"]["fg_ari"]["skipped"] == 5
    )
    assert results["metrics"]["ari"]["n"] == 5 and -1.0 <= results["metrics"]["ari"]["mean"] <= 1.0

    too_few = cli("train", "custom", "--out", "run_k3", "--cpu", *set_options(*TINY_CUSTOM, "model.K=3"))
    assert too_few.exit_code == 1 and "set model.K ≥ 4" in too_few.output


def test_without_masks_viz_and_gifs_draw_and_eval_ari_says_why_not(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images, _ = write_pictures(tmp_path, count=6, masks=False)
    assert (
        cli("data", "import", images, "--out", "data/custom.h5", "--size", "16", "--split-test", "0.5").exit_code == 0
    )
    overrides = set_options(*TINY_CUSTOM, "training.iters=1", "training.checkpoint_every=1")
    assert cli("train", "custom", "--out", "run", "--cpu", *overrides).exit_code == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "step_0000001.pt"

    drawn = cli("viz", "--checkpoint", checkpoint, "--out", "viz", "--num-images", "2")
    assert drawn.exit_code == 0, drawn.output
    assert len(list((tmp_path / "viz").glob("image_*.png"))) == 2
    assert "FG-ARI" not in (tmp_path / "viz" / "index.html").read_text()

    gifs = cli(
        "gifs", "--checkpoint", checkpoint, "--out", "gifs", "--num-images", "2", "--top-k", "1", "--frames", "2"
    )
    assert gifs.exit_code == 0, gifs.output
    assert len(list((tmp_path / "gifs").glob("slot_*_row_0.gif"))) == 4

    scored = cli("eval", "ari", "--checkpoint", checkpoint, "--out", "eval")
    assert scored.exit_code == 1
    assert "holds no ground-truth masks" in scored.output and "--masks" in scored.output
    assert not (tmp_path / "eval" / "results.json").exists()
