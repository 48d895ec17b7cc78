"""`emorl data synth NAME --png`: picture files whose import gives back the synthetic set's own segmentation."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from helpers import hold_lock_in_another_process, set_options
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from emorl_cli.data import synth_dsprites
from emorl_cli.data.synth import split_rng
from emorl_cli.data.synth_pngs import STAGING_PREFIX
from emorl_cli.training.run_logs import EVAL_SPLIT


def test_pictures_and_labels_are_the_generator_s_images_and_segmentation(cli, tmp_path):
    result = cli("data", "synth", "multi_dsprites", "--png", "--train", "12", "--out", tmp_path, "--seed", "3")
    assert result.exit_code == 0, result.output
    expected = synth_dsprites.generate(12, split_rng(3, "train"))
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names == [f"{i:05d}.png" for i in range(12)]
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == names
    for i, name in enumerate(names):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "images" / name)), expected["imgs"][i])
        labels = np.asarray(Image.open(tmp_path / "labels" / name))
        one_hot = expected["masks"][i, ..., 0] > 0  # [O, H, W]
        assert one_hot.sum(axis=0).max() == 1  # each pixel belongs to one entity
        np.testing.assert_array_equal(labels, one_hot.argmax(axis=0))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_imported_pictures_segment_exactly_as_the_synthetic_file(cli, tmp_path):
    assert cli("data", "synth", "multi_dsprites", "--png", "--train", "10", "--out", tmp_path).exit_code == 0
    out = tmp_path / "custom.h5"
    result = cli("data", "import", tmp_path / "images", "--masks", tmp_path / "labels", "--out", out, "--size", "64")
    assert result.exit_code == 0, result.output
    expected = synth_dsprites.generate(10, split_rng(0, "train"))
    with h5py.File(out, "r") as handle:
        imported = {split: (handle[split]["imgs"][:], handle[split]["masks"][:]) for split in ("train", "test")}
    # the import renumbers and splits; match each imported image to its source by its pixels
    matched = 0
    for imgs, masks in imported.values():
        for image, mask in zip(imgs, masks, strict=True):
            i = next(j for j in range(10) if np.array_equal(expected["imgs"][j], image))
            truth = expected["masks"][i, ..., 0].argmax(axis=0).ravel()
            got = mask[..., 0].argmax(axis=0).ravel()
            assert adjusted_rand_score(truth, got) == pytest.approx(1.0)
            matched += 1
    assert matched == 10


def test_existing_picture_folders_are_kept_without_force(cli, tmp_path):
    assert cli("data", "synth", "tetrominoes", "--png", "--train", "3", "--out", tmp_path).exit_code == 0
    before = (tmp_path / "images" / "00000.png").read_bytes()
    result = cli("data", "synth", "tetrominoes", "--png", "--train", "3", "--out", tmp_path, "--seed", "9")
    assert result.exit_code == 1 and "already exists; pass --force" in result.output
    assert (tmp_path / "images" / "00000.png").read_bytes() == before
    again = cli("data", "synth", "tetrominoes", "--png", "--train", "2", "--out", tmp_path, "--seed", "9", "--force")
    assert again.exit_code == 0, again.output
    assert len(list((tmp_path / "images").iterdir())) == 2  # replaced, not merged


def test_a_second_run_on_a_held_folder_is_refused_and_a_killed_run_s_staging_is_cleared(cli, tmp_path):
    holder = hold_lock_in_another_process(tmp_path)
    try:
        busy = cli("data", "synth", "tetrominoes", "--png", "--train", "2", "--out", tmp_path)
        assert busy.exit_code == 1 and f"PID {holder.pid}" in busy.output
        assert not (tmp_path / "images").exists() and not (tmp_path / "labels").exists()
    finally:
        holder.communicate("")
    leftover = tmp_path / f"{STAGING_PREFIX}killed"  # what kill -9 mid-write leaves
    (leftover / "images").mkdir(parents=True)
    assert cli("data", "synth", "tetrominoes", "--png", "--train", "2", "--out", tmp_path).exit_code == 0
    assert not leftover.exists() and len(list((tmp_path / "images").iterdir())) == 2


def test_png_needs_training_images(cli, tmp_path):
    result = cli("data", "synth", "tetrominoes", "--png", "--train", "0", "--out", tmp_path)
    assert result.exit_code == 1 and "--train must be positive, got 0" in result.output
    assert list(tmp_path.iterdir()) == []


def test_png_refuses_a_test_count_it_would_not_write(cli, tmp_path):
    result = cli("data", "synth", "tetrominoes", "--png", "--train", "2", "--test", "5", "--out", tmp_path)
    assert result.exit_code == 1 and "--test 5 does not apply with --png" in result.output
    assert "--split-test" in result.output and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("with_masks", [True, False])
def test_the_cpu_preset_trains_scores_and_draws_imported_pictures(cli, tmp_path, with_masks):
    """The import path end to end with `custom_cpu.yaml` (tiny sizes: the path, not the learning)."""
    assert cli("data", "synth", "multi_dsprites", "--png", "--train", "12", "--out", tmp_path).exit_code == 0
    data = tmp_path / "data"
    masks = ["--masks", tmp_path / "labels"] if with_masks else []
    imported = cli("data", "import", tmp_path / "images", *masks, "--out", data / "custom.h5", "--split-test", "0.34")
    assert imported.exit_code == 0, imported.output
    run = tmp_path / "run"
    tiny = ["model.z_size=8", "model.decoder_width=8", "model.encoder_width=8", "training.batch_size=2",
            "training.iters=4", "training.eval_every=2", "training.checkpoint_every=2",
            "eval.num_images=4"]  # fmt: skip
    trained = cli("train", "custom_cpu", "--data-dir", data, "--out", run, *set_options(*tiny))
    assert trained.exit_code == 0, trained.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [row for row in rows if row.get("split") == EVAL_SPLIT]
    assert [row["step"] for row in scored] == [2, 4]
    for row in scored:  # FG-ARI where the import had masks; the test loss (for best.pt) either way
        assert ("fg_ari" in row) == with_masks and row["loss"] is not None
        assert not with_masks or 0.0 <= row["fg_ari"] <= 1.0
    checkpoint = run / "checkpoints" / "step_0000004.pt"
    assert cli("viz", "--checkpoint", checkpoint, "--out", tmp_path / "viz", "--num-images", "2",
               "--data-dir", data).exit_code == 0  # fmt: skip
    assert (tmp_path / "viz" / "index.html").is_file()
    if with_masks:
        scores = cli("eval", "ari", "--checkpoint", checkpoint, "--out", tmp_path / "eval", "--data-dir", data)
        assert scores.exit_code == 0, scores.output
        assert 0.0 <= json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]["fg_ari"]["mean"] <= 1.0
