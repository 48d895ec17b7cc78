"""`emorl eval ari|dci|activeness`, `emorl viz` and `emorl gifs` end to end, on the original's checkpoints."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import subprocess_env, two_process_command
from PIL import Image

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
FIXTURES = DATA / "fixtures"
# the original's Tetrominoes checkpoint shown on the 10 real test images
ORIGINAL_ON_REAL10 = [
    "--checkpoint", GOLDEN / "tetrominoes.pth", "--config", "tetrominoes",
    "--data", FIXTURES / "tetrominoes_real10_test.h5",
]  # fmt: skip
# the golden sets were made with the plain ELBO objective ("geco": null in their JSON)
GOLDEN_SETS = {
    "tetrominoes": ["--config", "tetrominoes", "--set", "geco.enabled=false"],
    "slot_attention_tetrominoes": ["--config", "slot_attention_tetrominoes"],
}


@pytest.mark.parametrize("name", sorted(GOLDEN_SETS))
def test_eval_ari_with_100_samples_reproduces_the_original(cli, tmp_path, name):
    out = tmp_path / "eval"
    result = cli(
        "eval",
        "ari",
        "--checkpoint",
        GOLDEN / f"{name}.pth",
        *GOLDEN_SETS[name],
        "--data",
        GOLDEN / f"{name}_images.h5",
        "--samples",
        "100",
        "--batch-size",
        "250",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "inferred 100× (stochastic)" in " ".join(result.output.split())
    gold = np.load(GOLDEN / f"{name}.npz")
    n = int(gold["mc_samples"])
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [int(r["index"]) for r in rows] == list(range(10))
    metrics = ["mse", "fg_ari"] + (["nll", "kl"] if name == "tetrominoes" else [])
    for metric in metrics:
        ours = np.array([float(r[metric]) for r in rows])
        ours_std = np.array([float(r[f"{metric}_std"]) for r in rows])
        se = np.sqrt(ours_std**2 / 100 + gold[f"mc_{metric}_std"] ** 2 / n)
        gap = np.abs(ours - gold[f"mc_{metric}_mean"])
        assert np.all(gap <= 4 * se + 1e-6), (metric, gap, se)
    results = json.loads((out / "results.json").read_text())
    assert results["samples"] == 100 and results["num_images"] == 10
    assert results["metrics"]["mse"]["n"] == 10
    assert len(results["checkpoint_sha256"]) == 64 and results["emorl_version"]


def test_eval_ari_of_an_original_checkpoint_needs_a_config(cli, tmp_path):
    result = cli(
        "eval", "ari", "--checkpoint", GOLDEN / "tetrominoes.pth", "--data", FIXTURES / "tetrominoes_real10_test.h5"
    )
    assert result.exit_code == 1
    assert "--config" in result.output and "Traceback" not in result.output


def test_eval_ari_missing_data_is_one_clear_line(cli, tmp_path):
    result = cli(
        "eval", "ari", "--checkpoint", GOLDEN / "tetrominoes.pth", "--config", "tetrominoes", "--data-dir", tmp_path
    )
    assert result.exit_code == 1
    assert "tetrominoes_test.h5" in result.output and "emorl data" in result.output


def test_eval_ari_across_two_processes_gathers_every_image_once(tmp_path):
    command = two_process_command(
        "eval", "ari", "--checkpoint", str(GOLDEN / "tetrominoes.pth"), "--config", "tetrominoes",
        "--data", str(GOLDEN / "tetrominoes_images.h5"), "--samples", "2", "--out", str(tmp_path / "e"),
    )  # fmt: skip
    env = subprocess_env(ACCELERATE_USE_CPU="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["processes"] == 2 and results["num_images"] == 10
    rows = list(csv.DictReader((tmp_path / "e" / "per_image.csv").open()))
    assert sorted(int(r["index"]) for r in rows) == list(range(10))
    assert all(int(r["samples"]) == 2 for r in rows)


def test_eval_dci_and_activeness_write_their_json(cli, tmp_path):
    common = [
        "--checkpoint",
        GOLDEN / "tetrominoes.pth",
        "--config",
        "tetrominoes",
        "--data",
        FIXTURES / "tetrominoes_iodine_mini_test.h5",
    ]
    # the golden weights are barely trained: accept any overlap so that slots get matched
    dci = cli("eval", "dci", *common, "--estimators", "5", "--min-iou", "0", "--out", tmp_path / "dci")
    assert dci.exit_code == 0, dci.output
    scores = json.loads((tmp_path / "dci" / "dci.json").read_text())
    for key in ("disentanglement", "completeness", "informativeness_train", "informativeness_test"):
        assert 0.0 <= scores[key] <= 1.0
    assert scores["images"] == 10 and np.array(scores["importance"]).shape[0] == 32
    act = cli("eval", "activeness", *common, "--num-images", "4", "--out", tmp_path / "act")
    assert act.exit_code == 0, act.output
    activeness = json.loads((tmp_path / "act" / "activeness.json").read_text())
    assert len(activeness["activeness"]) == len(activeness["latent_min"]) == 32
    assert sorted(activeness["ranking"]) == list(range(32))


def test_viz_writes_one_figure_per_image_an_index_and_the_arrays(cli, tmp_path):
    out = tmp_path / "viz"
    result = cli(
        "viz",
        *ORIGINAL_ON_REAL10,
        "--num-images",
        "3",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    pngs = sorted(out.glob("image_*.png"))
    assert [p.name for p in pngs] == ["image_0.png", "image_1.png", "image_2.png"]
    width, height = Image.open(pngs[0]).size
    assert height > 6 * 35 and width > (2 + 4 * 3) * 35  # L + I = 6 rows; input, recon, 3 columns per slot
    html = (out / "index.html").read_text()
    assert all(p.name in html for p in pngs) and "FG-ARI" in html
    arrays = np.load(out / "viz.npz")
    assert arrays["images"].shape == (3, 3, 35, 35)
    stages = sorted(k for k in arrays.files if k.endswith("_masks") and k.startswith("stage"))
    assert len(stages) == 6 and arrays[stages[0]].shape == (3, 4, 1, 35, 35)
    assert sum(k.endswith("_attention") for k in arrays.files) == 3  # only the L layers attend


def test_gifs_write_top_k_traversals_per_slot_and_a_sheet(cli, tmp_path):
    out = tmp_path / "gifs"
    result = cli(
        "gifs",
        *ORIGINAL_ON_REAL10,
        "--num-images",
        "4",
        "--top-k",
        "2",
        "--frames",
        "5",
        "--image-index",
        "3",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    gifs = sorted(p.name for p in out.glob("*.gif"))
    assert gifs == sorted(f"slot_{k}_row_{r}.gif" for k in range(4) for r in range(2))
    frames = iio.imread(out / "slot_0_row_0.gif", index=None)
    assert 1 <= frames.shape[0] <= 5 and frames.shape[-1] in (3, 4)  # identical frames may be merged
    assert Image.open(out / "traversals.png").size[1] >= 8 * 35
    assert json.loads((out / "traversals.json").read_text())["image_index"] == 3


def test_gifs_refuses_an_image_index_outside_the_split(cli, tmp_path):
    result = cli(
        "gifs",
        *ORIGINAL_ON_REAL10,
        "--image-index",
        "10",
        "--out",
        tmp_path / "g",
    )
    assert result.exit_code == 1
    assert "--image-index 10 is outside the 10 images" in result.output and "0..9" in result.output
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())
