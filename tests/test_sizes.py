"""Sizes and numbers checked before the work: one range per option kind, memory estimates that refuse what
cannot fit, and pictures past a pixel limit — each one red line and exit code 1, before anything is written."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import one_error_line, subprocess_env, tiny_config
from PIL import Image
from typer.testing import CliRunner

from emorl_cli.cli.app import app
from emorl_cli.config import SEED_MAX
from emorl_cli.data.synth import synthesize
from emorl_cli.training.loop import train

runner = CliRunner()


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """ROOT/data (synthetic Tetrominoes) and ROOT/run (1 step, a checkpoint)."""
    root = tmp_path_factory.mktemp("sizes")
    synthesize("tetrominoes", root / "data", 8, 8, seed=4)
    train(tiny_config("training.iters=1", "training.checkpoint_every=1"), root / "run", data_dir=root / "data",
          show_progress=False)  # fmt: skip
    return root


def checkpoint_of(trained: Path) -> Path:
    return trained / "run" / "checkpoints" / "step_0000001.pt"


# ------------------------------------------------------------------------------ one range per option kind

HUGE = 10**23


def _option_cases(trained: Path) -> list[tuple[list, str]]:
    ckpt, data = checkpoint_of(trained), ["--data-dir", trained / "data"]
    return [
        (["data", "synth", "tetrominoes", "--out", "s", "--seed", -1], "--seed must be at least 0"),
        (["data", "synth", "tetrominoes", "--out", "s", "--seed", HUGE], f"--seed must be at most {SEED_MAX}"),
        (["data", "import", "pictures", "--out", "x.h5", "--seed", 2**32], f"--seed must be at most {SEED_MAX}"),
        (["data", "import", "pictures", "--out", "x.h5", "--size", 2000], "--size must be at most 1024"),
        (["data", "import", "pictures", "--out", "x.h5", "--size", 0], "--size must be at least 1"),
        (["eval", "ari", "--checkpoint", ckpt, *data, "--seed", HUGE], f"--seed must be at most {SEED_MAX}"),
        (["viz", "--checkpoint", ckpt, *data, "--out", "v", "--seed", -5], "--seed must be at least 0"),
        (["gifs", "--checkpoint", ckpt, *data, "--out", "g", "--frames", 100_000_000], "--frames must be at most"),
        (["eval", "ari", "--checkpoint", ckpt, *data, "--batch-size", HUGE], "--batch-size must be at most"),
        (["bench", "demo", "--mode", "eval", "--batch-size", 10**9], "--batch-size must be at most"),
        (["data", "info", "x.h5", "--preview", "p.png", "--count", 10**6], "--count must be at most 1024"),
    ]


def test_every_seed_size_frame_and_batch_option_out_of_range_is_one_line_naming_it(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, phrase in _option_cases(trained):
        line = one_error_line(invoke(*args))
        assert phrase in line and f"got {args[-1]}" in line, (args, line)  # the option, its range, the value seen
    assert not any(tmp_path.iterdir())  # nothing was written


def test_threads_beyond_a_few_per_cpu_are_refused_before_torch_sees_them():
    line = one_error_line(invoke("--threads", 100_000, "config", "show", "demo"))
    assert "--threads must be at most" in line and "logical CPUs" in line and "got 100000" in line
    assert invoke("--threads", 1, "config", "show", "demo").exit_code == 0


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("model.log_scale=1e30", "model.log_scale: Input should be less than or equal to 2"),
        ("model.log_scale=-50", "model.log_scale: Input should be greater than or equal to -10"),
        ("training.seed=-1", "training.seed: Input should be greater than or equal to 0"),
        (f"training.seed={HUGE}", f"training.seed: Input should be less than or equal to {SEED_MAX}"),
        ("eval.batch_size=100000000", "eval.batch_size: Input should be less than or equal to 65536"),
        ("training.num_workers=100000", "training.num_workers: Input should be less than or equal to 256"),
        ("model.init_gain=1e30", "model.init_gain: Input should be less than or equal to 100"),
    ],
)
def test_config_numbers_outside_their_range_fail_validation(override, phrase):
    result = invoke("config", "validate", "demo", "--set", override)
    assert result.exit_code == 1 and phrase in result.output, result.output


def test_the_largest_seed_is_accepted_by_numpy_and_torch_alike():
    """The limit is the largest seed every consumer takes: numpy's legacy generator and torch."""
    import torch

    np.random.RandomState(SEED_MAX)
    torch.manual_seed(SEED_MAX)
    with pytest.raises(ValueError):
        np.random.RandomState(SEED_MAX + 1)


# ------------------------------------------------------------------------------ memory estimates


def test_gifs_refuses_frames_that_cannot_fit_before_any_inference(trained, tmp_path, monkeypatch):
    from emorl_cli.pictures import gifs_memory_bytes
    from emorl_cli.training import memory

    cfg = tiny_config()
    needed = gifs_memory_bytes(cfg, 10, 1000)
    assert needed > 100 * gifs_memory_bytes(cfg, 10, 8)  # grows with the frames
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: needed // 2)
    out = tmp_path / "g"
    result = invoke("gifs", "--checkpoint", checkpoint_of(trained), "--data-dir", trained / "data", "--out", out,
                    "--frames", 1000, "--num-images", 2)  # fmt: skip
    line = one_error_line(result)
    assert "drawing the traversals needs at least about" in line and "1000 frames" in line
    assert "lower --frames or --top-k" in line
    assert not out.exists()


def test_gifs_memory_estimate_is_a_lower_bound_of_what_the_frames_hold(trained):
    """Oracle: the float32 frames `latent_traversals` returns and the sheet's canvas, measured, are at least
    the estimate's share for them (the estimate adds the render on top)."""
    from emorl_cli.data.dataset import open_split
    from emorl_cli.evaluate.session import batches_of, load_model
    from emorl_cli.evaluate.traversals import latent_traversals
    from emorl_cli.pictures import gifs_memory_bytes
    from emorl_cli.viz.figures import auto_scale

    loaded = load_model(checkpoint_of(trained))
    cfg = loaded.cfg
    split = open_split(cfg.data, "test", data_dir=trained / "data")
    result = latent_traversals(loaded.model, loaded.objective(), batches_of(split, [0, 1], 2), num_images=2,
                               top_k=3, frames=5)  # fmt: skip
    held = sum(t.frames.numel() * t.frames.element_size() for t in result.traversals)
    _, h, w = cfg.model.input_size
    s = auto_scale(h)
    canvas = len(result.traversals) * 5 * (s * h) * (s * w) * 3
    estimate = gifs_memory_bytes(cfg, 3, 5)
    assert held + 2 * canvas <= estimate <= 2 * (held + 2 * canvas)


def test_bench_eval_refuses_a_batch_that_cannot_fit(monkeypatch):
    from emorl_cli.training import memory

    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 10_000_000)
    line = one_error_line(invoke("bench", "demo", "--mode", "eval", "--batch-size", 4096, "--num-images", 4096))
    assert "inference needs at least about" in line and "batch 4096" in line and "--batch-size" in line


@pytest.mark.parametrize(
    "command, extra",
    [(["eval", "ari"], []), (["eval", "activeness"], []), (["viz"], []), (["gifs"], ["--frames", "2"])],
)
def test_inference_commands_refuse_a_batch_that_cannot_fit_before_any_inference(
    trained, tmp_path, monkeypatch, command, extra
):
    """A machine with half of what a batch of the 8 test images needs free (gifs' own estimate fits in it):
    refused with the batch it would have run, not the --batch-size asked for."""
    from emorl_cli.evaluate.session import load_model
    from emorl_cli.pictures import gifs_memory_bytes
    from emorl_cli.training import memory

    cfg = load_model(checkpoint_of(trained)).cfg
    free = memory.inference_batch_bytes(cfg, 8) // 2
    assert gifs_memory_bytes(cfg, 10, 2) < free < memory.inference_batch_bytes(cfg, 8)
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: free)
    out = tmp_path / "out"
    result = invoke(*command, "--checkpoint", checkpoint_of(trained), "--data-dir", trained / "data", "--out", out,
                    "--num-images", 8, "--batch-size", 64, *extra)  # fmt: skip
    line = one_error_line(result)
    assert "inference needs at least about" in line and "batch 8," in line and "lower --batch-size" in line
    assert not out.exists()


def test_segment_and_the_python_api_refuse_a_batch_that_cannot_fit(trained, tmp_path, monkeypatch):
    import emorl_cli
    from emorl_cli.errors import TrainingError
    from emorl_cli.training import memory

    pictures = np.zeros((3, 35, 35, 3), np.uint8)
    model = emorl_cli.load(checkpoint_of(trained))
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 1_000_000)
    with pytest.raises(TrainingError, match=r"inference needs at least about .*batch 3,.* lower batch_size"):
        model.segment(pictures, batch_size=16)
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).save(folder / f"p{i}.png")
    out = tmp_path / "segments"
    line = one_error_line(invoke("segment", "--checkpoint", checkpoint_of(trained), folder, "--out", out))
    assert "inference needs at least about" in line and "batch 3," in line and "lower --batch-size" in line
    assert not out.exists()


def test_the_inference_estimate_is_a_lower_bound_of_a_measured_batch(trained):
    """Oracle: the peak RSS that segmenting one batch of 16 pictures adds in a fresh process (model loaded,
    pictures in memory) is at least the estimate, which grows with the batch."""
    from emorl_cli.evaluate.session import load_model
    from emorl_cli.training.memory import inference_batch_bytes

    cfg = load_model(checkpoint_of(trained)).cfg
    assert inference_batch_bytes(cfg, 32) > 1.9 * inference_batch_bytes(cfg, 16)
    code = f"""
import os, resource, numpy as np, emorl_cli
model = emorl_cli.load({str(checkpoint_of(trained))!r})
pictures = np.random.default_rng(0).integers(0, 256, (16, 35, 35, 3), dtype=np.uint8)
model.segment(pictures[:1])  # the first call's one-off allocations (kernels, workspaces) before the baseline
before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
model.segment(pictures, batch_size=16)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert inference_batch_bytes(cfg, 16) <= int(done.stdout.split()[-1])


# ------------------------------------------------------------------------------ pictures past a pixel limit


def _pictures(folder: Path, count: int, side: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_a_picture_past_the_pixel_limit_is_one_line_before_it_is_decoded(tmp_path, monkeypatch):
    from emorl_cli.data import picture_files

    pictures = _pictures(tmp_path / "pictures", 3, 40)
    monkeypatch.setattr(picture_files, "MAX_PIXELS", 1000)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    line = one_error_line(invoke("data", "import", pictures, "--out", tmp_path / "out" / "x.h5", "--size", 16))
    assert "is 40x40 pixels (0.0016 megapixels), more than the 0.001 megapixels emorl opens" in line
    assert "p0.png" in line and "scale it down" in line
    assert not decoded  # refused from the header
    assert not (tmp_path / "out" / "x.h5").exists()


def test_pillow_warnings_never_reach_the_user_raw(tmp_path, monkeypatch):
    pictures = _pictures(tmp_path / "pictures", 3, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns above this, errors above twice it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke("data", "import", pictures, "--out", tmp_path / "x.h5", "--size", 16)
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert "DecompressionBombWarning" not in result.output


# ------------------------------------------------------------------------------ room on the disk


def test_data_synth_refuses_counts_the_disk_cannot_hold_before_writing(tmp_path, monkeypatch):
    from emorl_cli.data import space

    monkeypatch.setattr(space.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 50_000_000})())
    out = tmp_path / "synth"
    line = one_error_line(invoke("data", "synth", "tetrominoes", "--out", out, "--train", 100_000, "--test", 10))
    assert "100,000 training and 10 test images take about" in line and "50.0 MB free" in line
    assert "lower --train or --test" in line
    assert not out.exists()
    assert invoke("data", "synth", "tetrominoes", "--out", out, "--train", 20, "--test", 4).exit_code == 0


def test_data_import_refuses_a_size_the_disk_cannot_hold_before_reading_a_picture(tmp_path, monkeypatch):
    from emorl_cli.data import space

    pictures = _pictures(tmp_path / "pictures", 3, 40)
    monkeypatch.setattr(space.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1_000_000})())
    line = one_error_line(invoke("data", "import", pictures, "--out", tmp_path / "x.h5", "--size", 1024))
    assert "3 images of 1024x1024 take about 9.4 MB on disk" in line and "lower --size" in line
    assert not (tmp_path / "x.h5").exists()
