"""`emorl segment --checkpoint C INPUT... --out DIR`: every file it writes, resuming, the original's .pth, and
one line with exit code 1 on bad input.

Oracles: the Python API on the same pictures (the command writes what `emorl_cli.load(...).segment` returns),
the files read back against each other (label PNG = labels in segments.npz, slot alpha = mask), and the
statistics recomputed from the label map.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import error_with_phrases, subprocess_env
from PIL import Image
from test_api import fresh_checkpoint, pictures

import emorl_cli as emorl

GOLDEN = Path(__file__).parent / "data" / "golden"
SIZES = [(35, 35), (70, 70), (50, 40), (40, 60), (64, 48)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return fresh_checkpoint(tmp_path_factory.mktemp("ckpt") / "step_0000000.pt")


def picture_folder(folder: Path, count: int) -> Path:
    """`count` PNGs of mixed sizes (and one JPEG) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(pictures(count, side=35, seed=11)):
        w, h = SIZES[i % len(SIZES)]
        picture = Image.fromarray(pixels).resize((w, h), Image.Resampling.NEAREST)
        picture.save(folder / (f"pic{i:03d}.jpg" if i == 1 else f"pic{i:03d}.png"))
    return folder


def test_a_folder_of_mixed_sizes_gets_every_file_and_they_agree(cli, checkpoint, tmp_path):
    folder = picture_folder(tmp_path / "photos", 7)
    (folder / "notes.txt").write_text("not a picture: left out of a folder")
    out = tmp_path / "seg"
    result = cli("--threads", "1", "segment", folder, "--checkpoint", checkpoint, "--out", out, "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert "segmented 7 pictures" in result.output and "prepared 5 of 7 pictures to 35x35" in result.output
    names = [f"pic{i:03d}" for i in range(7)]
    npz = np.load(out / "segments.npz")
    assert list(npz["names"]) == names
    assert npz["labels"].shape == (7, 35, 35) and npz["masks"].shape == (7, 4, 35, 35)
    assert npz["loc"].shape == (7, 4, 32) and npz["scale"].shape == (7, 4, 32)
    summary = json.loads((out / "segments.json").read_text())
    assert summary["slots"] == 4 and len(summary["palette"]) == 4 and summary["refinement_iters"] == 2
    for i, name in enumerate(names):
        label_png = Image.open(out / "labels" / f"{name}.png")
        assert label_png.mode == "P"
        np.testing.assert_array_equal(np.asarray(label_png), npz["labels"][i])
        assert Image.open(out / "overlays" / f"{name}.png").size == (35, 35)
        for k in range(4):
            slot = np.asarray(Image.open(out / "slots" / name / f"slot_{k:02d}.png"))
            assert slot.shape == (35, 35, 4)
            np.testing.assert_allclose(slot[..., 3] / 255.0, npz["masks"][i, k], atol=0.5 / 255 + 1e-6)
        entry = summary["pictures"][i]
        assert entry["name"] == name and entry["source"].endswith(name + (".jpg" if i == 1 else ".png"))
        assert entry["preparation"]["original_size"] == list(SIZES[i % len(SIZES)])
        for stats in entry["slots"]:
            where = npz["labels"][i] == stats["slot"]
            assert stats["area"] == int(where.sum())
            if stats["area"]:
                rows, cols = np.nonzero(where)
                assert stats["bbox"] == [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
            else:
                assert stats["bbox"] is None and stats["mean_colour"] is None
    # the command writes what the Python API returns for the same pictures
    model = emorl.load(checkpoint, device="cpu")
    api = model.segment(sorted(folder.glob("pic*")))
    np.testing.assert_allclose(npz["masks"], api.masks, atol=1e-5)
    np.testing.assert_allclose(npz["loc"], api.loc, atol=1e-5)
    overlay = np.asarray(Image.open(out / "overlays" / "pic000.png")).astype(float)
    expected = 0.5 * api.images[0] + 0.5 * np.asarray(Image.open(out / "labels" / "pic000.png").convert("RGB"))
    np.testing.assert_allclose(overlay, expected, atol=1.0)


def test_globs_h5_groups_and_repeated_names_are_inputs(cli, checkpoint, tmp_path):
    picture_folder(tmp_path / "a", 2)
    picture_folder(tmp_path / "b", 1)
    h5 = GOLDEN / "tetrominoes_images.h5"
    out = tmp_path / "seg"
    result = cli("segment", str(tmp_path / "*" / "pic000.png"), f"{h5}:test", "--checkpoint", checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    names = list(np.load(out / "segments.npz")["names"])
    assert names[:2] == ["pic000", "pic000-2"] and names[2] == "tetrominoes_images-test-000000" and len(names) == 12


def test_an_interrupted_run_continues_where_it_stopped_and_ends_as_an_uninterrupted_one(cli, checkpoint, tmp_path):
    from emorl_cli.data.user_images import collect_sources
    from emorl_cli.evaluate.session import load_model
    from emorl_cli.segment import segment_to_folder

    folder = picture_folder(tmp_path / "photos", 9)
    loaded = load_model(checkpoint)
    sources = collect_sources([folder])
    calls = []

    def stop_after_two_batches(n: int) -> None:
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_to_folder(loaded, sources, tmp_path / "seg", batch_size=2, progress=stop_after_two_batches)
    assert len(list((tmp_path / "seg" / "parts").glob("*.npz"))) == 4
    assert not (tmp_path / "seg" / "segments.npz").exists()
    resumed = segment_to_folder(loaded, sources, tmp_path / "seg", batch_size=2)
    assert (resumed.skipped, resumed.segmented) == (4, 5)
    segment_to_folder(loaded, sources, tmp_path / "whole", batch_size=3)
    a, b = np.load(tmp_path / "seg" / "segments.npz"), np.load(tmp_path / "whole" / "segments.npz")
    for key in ("labels", "masks", "loc", "scale"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)
    again = cli("segment", folder, "--checkpoint", checkpoint, "--out", tmp_path / "seg")
    assert again.exit_code == 0 and "segmented 0 pictures" in again.output and "9 already done" in again.output


@pytest.mark.slow
def test_kill_9_mid_run_then_the_same_command_finishes_the_rest(checkpoint, tmp_path):
    folder = picture_folder(tmp_path / "photos", 40)
    out = tmp_path / "seg"
    command = [sys.executable, "-m", "emorl_cli", "--threads", "1", "segment", str(folder)]
    command += ["--checkpoint", str(checkpoint), "--out", str(out), "--batch-size", "4"]
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / "parts").glob("*.npz"))) < 8:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((out / "parts").glob("*.npz")))
    assert 8 <= done < 40, f"{done} pictures were done when the run was killed"
    for png in out.rglob("*.png"):  # nothing half-written under a final name
        Image.open(png).load()
    rerun = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{done} already done" in rerun.stdout
    assert len(np.load(out / "segments.npz")["names"]) == 40


def test_the_original_pth_segments_through_the_command(cli, tmp_path):
    out = tmp_path / "seg"
    h5 = GOLDEN / "tetrominoes_images.h5"
    result = cli("segment", h5, "--checkpoint", GOLDEN / "tetrominoes.pth", "--config", "tetrominoes", "--out", out,
                 "--refinement-iters", "1", "--seed", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    npz = np.load(out / "segments.npz")
    with h5py.File(h5) as handle:
        images = handle["test"]["imgs"][:]
    names = [f"tetrominoes_images-test-{i:06d}" for i in range(len(images))]
    assert list(npz["names"]) == names
    model = emorl.load(GOLDEN / "tetrominoes.pth", config="tetrominoes", device="cpu")
    api = model.segment(images, refinement_iters=1, seed=3, names=names)  # the same pictures, names and seed
    np.testing.assert_allclose(npz["masks"], api.masks, atol=1e-5)
    np.testing.assert_allclose(npz["loc"], api.loc, atol=1e-5)
    assert json.loads((out / "segments.json").read_text())["refinement_iters"] == 1


def test_bad_input_is_one_line_and_exit_1(cli, checkpoint, tmp_path):
    folder = picture_folder(tmp_path / "photos", 2)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"\x89PNG but not really")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    out = str(tmp_path / "seg")
    ck = ["--checkpoint", str(checkpoint), "--out", out]
    error_with_phrases(cli("segment", tmp_path / "broken", *ck), "cannot read image", "a.png")
    error_with_phrases(cli("segment", tmp_path / "empty", *ck), "holds no pictures", "empty")
    error_with_phrases(cli("segment", tmp_path / "nothing-here", *ck), "does not exist")
    error_with_phrases(cli("segment", str(tmp_path / "*.webp"), *ck), "no file matches")
    error_with_phrases(
        cli("segment", folder, "--checkpoint", tmp_path / "notes.pt", "--out", out), "cannot be read as a checkpoint"
    )
    error_with_phrases(
        cli("segment", folder, "--checkpoint", GOLDEN / "tetrominoes.pth", "--out", out), "pass the config"
    )
    assert cli("segment", folder, *ck, "--batch-size", "0").exit_code in (1, 2)
    # a folder holding another checkpoint's segments is refused, not mixed
    assert cli("segment", folder, *ck).exit_code == 0
    other = fresh_checkpoint(tmp_path / "other.pt", "model.init_gain=0.5")
    error_with_phrases(cli("segment", folder, "--checkpoint", other, "--out", out), "another checkpoint", "--out")
    error_with_phrases(cli("segment", folder, *ck, "--seed", "5"), "seed 0")


def test_a_picture_past_the_pixel_limit_is_refused_before_decoding_without_pillows_warning(
    cli, checkpoint, tmp_path, monkeypatch
):
    from emorl_cli.data import picture_files

    folder = picture_folder(tmp_path / "photos", 2)
    monkeypatch.setattr(picture_files, "MAX_PIXELS", 100)  # the pictures of picture_folder are larger
    result = cli("segment", folder, "--checkpoint", checkpoint, "--out", tmp_path / "seg")
    error_with_phrases(result, "megapixels emorl opens")
    assert "DecompressionBomb" not in result.output
    assert not (tmp_path / "seg" / "segments.npz").exists()
