"""`emorl train`, `eval ari`, `viz` and `gifs` on the ClevrTex fixture, end to end (a tiny model at 32²)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from clevrtex_fixture import write_variant
from helpers import set_options
from typer.testing import CliRunner

from emorl_cli.cli.app import app

SMALL = [
    "data.image_size=32",
    "model.input_size=[3,32,32]",
    "model.z_size=8",
    "training.iters=2",
    "training.batch_size=2",
    "training.warmup=1",
    "training.checkpoint_every=2",
    "training.image_every=1000",
    "geco.warm_start=1",
    "training.refinement_curriculum=[[-1,1]]",
    "eval.batch_size=4",
]
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data folder, checkpoint) of two training steps on the fixture's clevrtex_full train split."""
    root = tmp_path_factory.mktemp("clevrtex")
    write_variant(root, "full", 20, per_folder=4, seed=0)
    write_variant(root, "outd", 6, per_folder=3, seed=1)
    run = root / "run"
    result = cli("--threads", "1", "train", "clevrtex", "--data-dir", root, "--out", run, *set_options(*SMALL))
    assert result.exit_code == 0, result.output
    return root, run / "checkpoints" / "step_0000002.pt"


def test_eval_ari_reports_the_clevrtex_metrics_per_variant(trained, tmp_path):
    root, checkpoint = trained
    out = tmp_path / "eval"
    args = ["--checkpoint", checkpoint, "--data-dir", root, "--out", out]
    result = cli("--threads", "1", "eval", "ari", *args, "--variant", "full", "--variant", "outd")
    assert result.exit_code == 0, result.output
    for phrase in ("ClevrTex (test), I=2", "mIoU", "FG-ARI", "outd", "summed over pixels and channels"):
        assert phrase in " ".join(result.output.split())
    results = json.loads((out / "results.json").read_text())
    assert list(results["variants"]) == ["full", "outd"]
    assert results["variants"]["full"]["num_images"] == 2 and results["variants"]["outd"]["num_images"] == 6
    for variant in ("full", "outd"):
        rows = list(csv.DictReader((out / f"per_image_{variant}.csv").open()))
        metrics = results["variants"][variant]["metrics"]
        assert set(metrics) == {"ari", "fg_ari", "miou", "mse", "kl"}
        for metric in metrics:
            values = np.array([float(r[metric]) for r in rows])
            assert metrics[metric]["mean"] == pytest.approx(values.mean())
        assert all(0 < float(r["miou"]) <= 1 and float(r["mse"]) > 0 for r in rows)


def test_eval_ari_defaults_to_the_configs_test_variant_and_takes_a_variant_folder(trained, tmp_path):
    root, checkpoint = trained
    result = cli("eval", "ari", "--checkpoint", checkpoint, "--data-dir", root, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert list(json.loads((tmp_path / "a" / "results.json").read_text())["variants"]) == ["full"]
    result = cli("eval", "ari", "--checkpoint", checkpoint, "--data", root / "clevrtex_outd", "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "results.json").read_text())["variants"]["outd"]["num_images"] == 6


def test_viz_and_gifs_draw_clevrtex_images(trained, tmp_path):
    root, checkpoint = trained
    result = cli("viz", "--checkpoint", checkpoint, "--data-dir", root, "--out", tmp_path / "viz", "--num-images", 2)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "viz" / "image_1.png").is_file() and (tmp_path / "viz" / "index.html").is_file()
    gifs = ["--out", tmp_path / "gifs", "--num-images", 2, "--top-k", 1, "--frames", 2]
    result = cli("gifs", "--checkpoint", checkpoint, "--data", root / "clevrtex_outd", *gifs)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "gifs").glob("slot_*_row_*.gif"))) == 11


def test_what_clevrtex_cannot_do_is_one_line_errors(trained, tmp_path):
    root, checkpoint = trained
    result = cli("eval", "dci", "--checkpoint", checkpoint, "--data-dir", root, "--out", tmp_path / "dci")
    assert result.exit_code == 1 and "no ground-truth factor arrays" in result.output
    result = cli("eval", "ari", "--checkpoint", checkpoint, "--data-dir", root, "--variant", "outd", "--split", "train")
    assert result.exit_code == 1 and "outd is a test set only" in result.output
    result = cli("eval", "ari", "--checkpoint", checkpoint, "--data-dir", root, "--variant", "camo")
    assert result.exit_code == 1 and "emorl data fetch --clevrtex --variant camo" in " ".join(result.output.split())
