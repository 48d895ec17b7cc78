"""Results that must not be wrong without a word: a non-finite model, masks with more entities than slots,
an empty report, a contradictory resume, and the `train` line `data import` prints."""

from __future__ import annotations

import shlex
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import TINY, one_error_line, set_options, tiny_config
from PIL import Image
from typer.testing import CliRunner

from emorl_cli.cli.app import app
from emorl_cli.data.synth import synthesize
from emorl_cli.training.loop import train

runner = CliRunner()


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """ROOT/data (synthetic Tetrominoes) and ROOT/run (1 step, a checkpoint)."""
    root = tmp_path_factory.mktemp("results")
    synthesize("tetrominoes", root / "data", 8, 8, seed=4)
    cfg = tiny_config("training.iters=1", "training.checkpoint_every=1")
    train(cfg, root / "run", data_dir=root / "data", show_progress=False)
    return root


def checkpoint_of(trained: Path) -> Path:
    return trained / "run" / "checkpoints" / "step_0000001.pt"


def test_eval_ari_on_a_model_with_nan_weights_is_one_line_and_exit_1(trained, tmp_path):
    ckpt = torch.load(checkpoint_of(trained), weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.numel() > 1)
    ckpt["model"][name][0] = float("nan")
    broken = tmp_path / "nan.pt"
    torch.save(ckpt, broken)
    line = one_error_line(invoke("eval", "ari", "--checkpoint", broken, "--data-dir", trained / "data",
                                 "--out", tmp_path / "eval"))  # fmt: skip
    assert "holds NaN or infinite values in 1 of its" in line and name in line and "earlier" in line
    assert not (tmp_path / "eval" / "results.json").exists()


def test_masks_with_more_entities_than_slots_are_scored_with_a_note(trained, tmp_path):
    """A tetrominoes model (K=4) on a file whose masks hold 6 entities: scored, and said."""
    wide = tmp_path / "wide.h5"
    with h5py.File(trained / "data" / "tetrominoes_test.h5") as src, h5py.File(wide, "w") as dst:
        masks = src["test/masks"][()]  # [N, 4, H, W, 1]
        extra = np.zeros((masks.shape[0], 2, *masks.shape[2:]), masks.dtype)
        dst["test/imgs"] = src["test/imgs"][()]
        dst["test/masks"] = np.concatenate([masks, extra], axis=1)  # [N, 6, H, W, 1]
    result = invoke("eval", "ari", "--checkpoint", checkpoint_of(trained), "--data", wide, "--out", tmp_path / "e",
                    "--num-images", 2)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "holds up to 6 entities" in result.output and "the model has 4 slots" in result.output
    assert (tmp_path / "e" / "results.json").is_file()


def test_report_with_nothing_to_report_writes_no_csv_and_no_plot(trained, tmp_path):
    csv, plot = tmp_path / "table.csv", tmp_path / "curves.png"
    line = one_error_line(invoke("report", trained / "run", "--csv", csv, "--plot", plot))
    assert "nothing to report" in line
    assert not csv.exists() and not plot.exists()


def test_train_resume_of_one_folder_with_out_naming_another_is_refused(trained, tmp_path):
    other = tmp_path / "other"
    line = one_error_line(invoke("train", "demo", "--resume", trained / "run", "--out", other,
                                 "--data-dir", trained / "data"))  # fmt: skip
    assert "--resume" in line and "--out" in line and "names another" in line
    assert not other.exists()


def _labelled_pictures(root: Path, count: int, labels: int) -> tuple[Path, Path]:
    """Pictures and label masks, each mask holding `labels` − 1 objects (0 = background)."""
    images, masks = root / "pictures", root / "labels"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / f"p{i}.png")
        grid = (np.arange(400) % labels).reshape(20, 20).astype(np.uint8)  # every label present
        Image.fromarray(grid, mode="L").save(masks / f"p{i}.png")
    return images, masks


def test_the_train_line_data_import_prints_keeps_k_within_its_limit_quotes_paths_and_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images, masks = _labelled_pictures(tmp_path, 4, 70)
    out = tmp_path / "my data" / "many objects.h5"
    imported = invoke("data", "import", images, "--masks", masks, "--out", out, "--size", 20, "--split-test", 0.5)
    assert imported.exit_code == 0, imported.output
    line = next(row for row in imported.output.splitlines() if row.startswith("train with: "))
    args = shlex.split(line.removeprefix("train with: "))
    assert args[:3] == ["emorl", "train", "custom"]
    assert "model.K=64" in args and f"data.data_dir={out.parent}" in args and "data.train_file=many objects.h5" in args
    assert "more than the 64 slots" in imported.output
    tiny = set_options(*[o for o in TINY if not o.startswith("training.refinement")], "training.iters=1",
                       "training.checkpoint_every=1", "training.eval_every=0")  # fmt: skip
    trained = invoke(*args[1:], "--out", tmp_path / "run", "--cpu", *tiny)
    assert trained.exit_code == 0, trained.output
    assert "70 entities" in trained.output  # trained on K=64 slots, with a note
