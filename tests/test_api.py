"""The Python API: `emorl_cli.load(path, config=None, device="auto").segment(images, …)`.

Oracles: the original implementation's Monte Carlo means on its Tetrominoes checkpoint (tests/data/golden),
the data layer's own preparation of CLEVR, ClevrTex and imported pictures, the model called directly, and
the identities a segmentation must satisfy (labels = argmax of the masks, reconstruction = Σ masks·components).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import emorl_cli as emorl
from emorl_cli.checkpoint import save_checkpoint
from emorl_cli.config import dump_yaml, load_config
from emorl_cli.data.batches import images_to_tensor
from emorl_cli.errors import CheckpointError, DataError, EmorlError, InputError
from emorl_cli.model import build_model

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
MC_SIGMAS = 4.0


def fresh_checkpoint(path: Path, *overrides: str) -> Path:
    """A demo-config model as initialised (seed 0), saved as an emorl checkpoint."""
    cfg = load_config("demo", ["training.mixed_precision=no", *overrides])
    torch.manual_seed(0)
    return save_checkpoint(path, model=build_model(cfg.model), config=cfg)


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory) -> Path:
    return fresh_checkpoint(tmp_path_factory.mktemp("ckpt") / "step_0000000.pt")


def pictures(count: int, side: int = 35, seed: int = 0) -> np.ndarray:
    """uint8 [count, side, side, 3]: coloured rectangles on black."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, side, side, 3), np.uint8)
    for i in range(count):
        for _ in range(2):
            y, x = rng.integers(0, side - 8, 2)
            h, w = rng.integers(4, 9, 2)
            out[i, y : y + h, x : x + w] = rng.integers(60, 256, 3)
    return out


def golden_elbo_config(tmp_path: Path) -> Path:
    """The Tetrominoes config with the objective the golden outputs were made with (plain ELBO)."""
    path = tmp_path / "tetrominoes_elbo.yaml"
    path.write_text(dump_yaml(load_config("tetrominoes", ["geco.enabled=false"])))
    return path


# ---------------------------------------------------------------------------------------- against the original


@pytest.mark.slow
def test_an_original_pth_segments_as_the_original_computes_it(tmp_path):
    """The original's checkpoint through the API: per image, the mean over passes of the MSE of the
    reconstruction and of the FG-ARI of the label map agree with the original's 100-pass means (4 SE)."""
    from sklearn.metrics import adjusted_rand_score

    gold = np.load(GOLDEN / "tetrominoes.npz")
    images = np.rint((gold["mc_images"].transpose(0, 2, 3, 1) + 1.0) / 2.0 * 255.0).astype(np.uint8)  # [B,H,W,3]
    assert np.allclose(images_to_tensor(images).numpy(), gold["mc_images"], atol=1e-6)  # the same pixels
    model = emorl.load(GOLDEN / "tetrominoes.pth", config=golden_elbo_config(tmp_path), device="cpu")
    true = gold["mc_true_masks"].argmax(1)[:, 0]  # [B, H, W]
    passes, b = 32, images.shape[0]
    # every copy is a picture of its own name, so each gets its own samples: 32 passes in one call
    result = model.segment(np.tile(images, (passes, 1, 1, 1)), batch_size=160)
    x = np.tile(images, (passes, 1, 1, 1)).transpose(0, 3, 1, 2) / 255.0  # [P*B, 3, H, W]
    mse = ((result.reconstructions - x) ** 2).mean(axis=(1, 2, 3)).reshape(passes, b)
    labels = result.labels.reshape(passes, b, *true.shape[1:])
    fg_ari = [[adjusted_rand_score(t[t > 0], p[t > 0]) for t, p in zip(true, pass_, strict=True)] for pass_ in labels]
    n_gold = int(gold["mc_samples"])
    for name, values in (("mse", np.array(mse)), ("fg_ari", np.array(fg_ari))):
        mean, std = values.mean(0), values.std(0)
        se = np.sqrt(std**2 / passes + gold[f"mc_{name}_std"] ** 2 / n_gold)
        z = np.abs(mean - gold[f"mc_{name}_mean"]) / np.maximum(se, 1e-12)
        assert np.all(z <= MC_SIGMAS), f"{name}: z {np.round(z, 2).tolist()}"


def test_the_api_matches_the_model_called_on_the_h5_files_images(tmp_path):
    """Unchanged pictures go to the model exactly as the dataset's batches do, with the config's objective
    and test-time I: the same noise gives the same masks and latents as calling the model directly."""
    from emorl_cli.data.dataset import H5Dataset
    from emorl_cli.evaluate.segmentation import PictureNoise, picture_seed

    model = emorl.load(GOLDEN / "tetrominoes.pth", config="tetrominoes", device="cpu")
    dataset = H5Dataset(GOLDEN / "tetrominoes_images.h5", "test", load_masks=False)
    batch = dataset.get_batch(list(range(4)))
    images = np.rint((batch["imgs"].numpy().transpose(0, 2, 3, 1) + 1) / 2 * 255).astype(np.uint8)
    result = model.segment(images, seed=7)
    loaded = model.loaded
    noise = PictureNoise([picture_seed(7, name) for name in result.names], torch.device("cpu"))
    with torch.no_grad():
        out = loaded.model(batch["imgs"], loaded.objective(), refinement_iters=3, noise=noise)
    assert loaded.objective().kind != "elbo"  # the tetrominoes config trains with GECO: the API uses it too
    np.testing.assert_allclose(result.masks, out.masks[:, :, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(result.loc, out.posterior_loc.numpy(), atol=1e-6)
    np.testing.assert_allclose(result.scale, out.posterior_scale.numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------- the result


def test_the_result_holds_every_array_per_picture_and_as_torch(demo_checkpoint):
    model = emorl.load(demo_checkpoint, device="auto")
    assert model.device.type in ("cpu", "cuda") and model.num_slots == 4 and model.image_size == 35
    result = model.segment(pictures(3), batch_size=2)
    n, k, s, d = 3, 4, 35, 32
    assert result.masks.shape == (n, k, s, s) and result.labels.shape == (n, s, s)
    assert result.components.shape == (n, k, 3, s, s) and result.reconstructions.shape == (n, 3, s, s)
    assert result.loc.shape == (n, k, d) and result.scale.shape == (n, k, d) and result.images.dtype == np.uint8
    np.testing.assert_allclose(result.masks.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.labels, result.masks.argmax(1))
    recon = (result.masks[:, :, None] * result.components).sum(1)  # [N, 3, S, S]
    np.testing.assert_allclose(result.reconstructions, recon, atol=1e-5)
    assert (result.scale > 0).all()
    one = result[2]
    assert one.masks.shape == (k, s, s) and one.labels.shape == (s, s) and one.loc.shape == (k, d)
    np.testing.assert_array_equal(one.labels, result.labels[2])
    tensors = result.to_torch()
    assert set(tensors) >= {"masks", "labels", "components", "reconstructions", "loc", "scale", "images"}
    assert torch.equal(tensors["masks"], torch.from_numpy(result.masks))
    assert torch.equal(one.to_torch()["loc"], torch.from_numpy(result.loc[2]))
    assert len(result) == 3 and [r.name for r in result] == result.names


def test_a_picture_gets_the_same_segmentation_in_any_batch_and_order(demo_checkpoint):
    model = emorl.load(demo_checkpoint, device="cpu")
    images = pictures(5, seed=3)
    together = model.segment(images, batch_size=5)
    one_by_one = model.segment(images, batch_size=1)
    np.testing.assert_allclose(together.masks, one_by_one.masks, atol=1e-5)
    np.testing.assert_allclose(together.loc, one_by_one.loc, atol=1e-5)
    again = model.segment(images, batch_size=5)
    np.testing.assert_array_equal(together.masks, again.masks)  # the same call, the same result
    other_seed = model.segment(images, batch_size=5, seed=1)
    assert not np.allclose(together.loc, other_seed.loc)  # the seed does reach the samples


def test_inputs_of_every_kind_and_size_are_prepared_as_the_dataset_and_said(demo_checkpoint, tmp_path, caplog):
    from emorl_cli.data.folder_import import prepare_image

    model = emorl.load(demo_checkpoint, device="cpu")
    big = pictures(1, side=70, seed=4)[0]
    wide = np.ascontiguousarray(np.concatenate([big, big[:, :30]], axis=1))  # [70, 100, 3]
    Image.fromarray(wide).save(tmp_path / "wide.png")
    with caplog.at_level(logging.INFO, logger="emorl"):
        result = model.segment([Image.fromarray(big), tmp_path / "wide.png", str(tmp_path / "wide.png"), big[:35, :35]])
    assert result.names == ["image-000000", "wide", "wide-2", "image-000003"]
    assert result.images.shape == (4, 35, 35, 3)
    np.testing.assert_array_equal(result.images[0], prepare_image(Image.fromarray(big), 35))
    np.testing.assert_array_equal(result.images[1], prepare_image(Image.fromarray(wide), 35))
    np.testing.assert_array_equal(result.images[3], big[:35, :35])
    assert result.preparations[1].crop == (15, 0, 85, 70) and result.preparations[1].original_size == (100, 70)
    assert result.preparations[3].unchanged and not result.preparations[0].unchanged
    assert "prepared 3 of 4 pictures to 35x35" in caplog.text


def test_clevr_pictures_are_prepared_as_the_clevr_dataset():
    from emorl_cli.data.dataset import clevr_preprocess_image
    from emorl_cli.data.user_images import prepare_picture

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    pixels, how = prepare_picture(Image.fromarray(frame), load_config("clevr6").data)
    np.testing.assert_array_equal(pixels, clevr_preprocess_image(frame, 96))
    assert how.crop == (64, 29, 256, 221) and how.size == 96
    bigger, how = prepare_picture(Image.fromarray(np.repeat(np.repeat(frame, 2, 0), 2, 1)), load_config("clevr6").data)
    assert how.crop == (128, 58, 512, 442) and "scaled" in how.method and bigger.shape == (96, 96, 3)


def test_clevrtex_pictures_are_prepared_as_the_clevrtex_reader(tmp_path):
    from emorl_cli.data.clevrtex import load_image
    from emorl_cli.data.user_images import prepare_picture

    rng = np.random.default_rng(1)
    path = tmp_path / "CLEVRTEX_full_000001.png"
    Image.fromarray(rng.integers(0, 256, (240, 320, 4), dtype=np.uint8), mode="RGBA").save(path)
    with Image.open(path) as picture:
        pixels, how = prepare_picture(picture, load_config("clevrtex").data)
    np.testing.assert_array_equal(pixels, load_image(path, 128))
    assert how.crop == (64, 24, 256, 216)


def test_a_slot_attention_pth_gives_its_slots_as_loc_and_no_scale():
    model = emorl.load(GOLDEN / "slot_attention_tetrominoes.pth", config="slot_attention_tetrominoes", device="cpu")
    result = model.segment(pictures(2))
    assert result.scale is None and result[0].scale is None and "scale" not in result.to_torch()
    assert result.loc.shape == (2, 4, 32) and result.masks.shape == (2, 4, 35, 35)
    np.testing.assert_allclose(result.masks.sum(1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_clear_error(demo_checkpoint, tmp_path):
    model = emorl.load(demo_checkpoint, device="cpu")
    cases = [
        (pictures(1)[0].astype(np.float32) / 255.0, DataError, "looks like the range 0..1"),
        (np.zeros((2, 35, 35), np.uint8), InputError, "expected [H, W, 3]"),
        (np.zeros((2, 2, 35, 35, 3), np.uint8), InputError, "has shape [2, 2, 35, 35, 3]"),
        ([tmp_path / "missing.png"], InputError, "does not exist"),
        ([], InputError, "is empty"),
        ({"a": 1}, InputError, "is a dict"),
    ]
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    cases.append(([tmp_path / "broken.png"], DataError, "cannot read image"))
    for images, kind, phrase in cases:
        with pytest.raises(kind) as caught:
            model.segment(images)
        assert phrase in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(InputError, match="batch_size must be"):
        model.segment(pictures(1), batch_size=0)
    with pytest.raises(InputError, match="refinement_iters must be"):
        model.segment(pictures(1), refinement_iters=-1)


def test_bad_checkpoints_and_devices_are_one_clear_error(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"):
        emorl.load(tmp_path / "notes.pt")
    with pytest.raises(CheckpointError, match="pass the config it was trained with"):
        emorl.load(GOLDEN / "tetrominoes.pth")
    with pytest.raises(InputError, match="not a torch device"):
        emorl.load(GOLDEN / "tetrominoes.pth", config="tetrominoes", device="quantum")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="torch sees no CUDA GPU"):
            emorl.load(GOLDEN / "tetrominoes.pth", config="tetrominoes", device="cuda")
    assert issubclass(CheckpointError, EmorlError)


def test_importing_the_package_does_not_import_torch():
    import subprocess
    import sys

    from helpers import subprocess_env

    code = "import sys, emorl_cli; assert callable(emorl_cli.load); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------- the docs


def doc_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of a Markdown page, in order."""
    blocks, language, lines = [], None, []
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(lines)))
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def test_the_worked_example_of_docs_using_runs(cli, tmp_path, monkeypatch, capsys):
    """Every Python block of docs/using.md in order, in one namespace, and its `emorl segment` line, on
    stand-ins of the files it names: a demo-config checkpoint, two photos, the original's .pth."""
    import shlex
    import shutil

    monkeypatch.chdir(tmp_path)
    fresh_checkpoint(tmp_path / "runs" / "demo" / "checkpoints" / "best.pt")
    (tmp_path / "photos").mkdir()
    Image.fromarray(pictures(1, side=90, seed=5)[0]).resize((120, 90)).save(tmp_path / "photos" / "kitchen.jpg")
    Image.fromarray(pictures(1, side=35, seed=6)[0]).save(tmp_path / "photos" / "desk.png")
    (tmp_path / "models").mkdir()
    shutil.copy(GOLDEN / "tetrominoes.pth", tmp_path / "models" / "emorl-tetrominoes-seed-1200-state-200000.pth")
    blocks = doc_blocks(Path(__file__).parent.parent / "docs" / "using.md")
    assert sum(language == "python" for language, _ in blocks) >= 5
    namespace: dict = {}
    for language, code in blocks:
        if language == "python":
            exec(compile(code, "docs/using.md", "exec"), namespace)
        elif language == "bash":
            for line in code.splitlines():
                if line.startswith("emorl segment"):
                    result = cli(*shlex.split(line)[1:])
                    assert result.exit_code == 0, result.output
    printed = capsys.readouterr().out
    assert "['kitchen', 'desk']" in printed and "(2, 4, 35, 35) (2, 35, 35) (2, 4, 32)" in printed
    assert "120x90 → 35x35: centre square crop, bicubic resize" in printed
    assert "['desk' 'kitchen'] (2, 35, 35)" in printed and "(8, 35, 35)" in printed
    assert (tmp_path / "reconstruction.png").is_file() and (tmp_path / "segments" / "segments.json").is_file()
