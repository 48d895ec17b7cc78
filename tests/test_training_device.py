"""The training step does not wait for the device between log steps; the NaN guard still stops at the first
bad step's log interval without saving touched weights; data loading with workers and pinned memory.

On the CPU "waiting for the device" is detected as emorl code reading a tensor's value on the host (`float(t)`,
`t.item()`, `if t:` …), which on a GPU is what makes the CPU wait; on CUDA torch's own sync debug mode is
the oracle.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, set_options, tiny_config

from emorl_cli.accelerator import make_accelerator
from emorl_cli.checkpoint import load_checkpoint
from emorl_cli.data.synth import synthesize
from emorl_cli.training import step as step_module
from emorl_cli.training.loop import Trainer, train
from emorl_cli.training.rundir import RunDir
from emorl_cli.training.step import StepRunner

HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__format__")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    synthesize("tetrominoes", folder, 64, 8, seed=3)
    return folder


@pytest.fixture
def host_reads(monkeypatch):
    """A list that receives the module of every emorl function reading a tensor's value on the host."""
    seen: list[str] = []

    def spy(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("emorl_cli"):
                seen.append(f"{caller}:{name}")
            return original(self, *args, **kwargs)

        return wrapper

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    return seen


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_a_training_step_reads_nothing_from_the_device(host_reads, precision):
    cfg = tiny_config(f"training.mixed_precision={precision}", "training.clip_grad_norm=5.0")
    runner = StepRunner(cfg, make_accelerator(precision, cpu=True))
    images = torch.rand(2, 3, 35, 35) * 2 - 1
    host_reads.clear()
    scalars = [runner(step, images) for step in range(3)]  # ELBO, GECO warm start, GECO update
    assert host_reads == []
    logged = runner.read(scalars[-1])
    assert host_reads  # the read at a log step does read (the spy works)
    assert {"loss", "nll", "kl", "mse", "lr", "grad_norm", "geco_beta", "geco_C_ema"} <= set(logged)
    assert all(isinstance(v, float) for v in logged.values())


def test_the_loop_reads_the_device_only_at_log_checkpoint_and_image_steps(host_reads, synth_dir, tmp_path, monkeypatch):
    original_call = StepRunner.__call__

    def call(self, step, images):
        host_reads.append(("step", step))  # the spy's list, so steps and reads share one order
        return original_call(self, step, images)

    monkeypatch.setattr(StepRunner, "__call__", call)
    cfg = tiny_config("training.iters=8", "training.log_every=3", "training.checkpoint_every=4")
    train(cfg, tmp_path / "run", data_dir=synth_dir, show_progress=False)
    step, reading_steps = None, set()
    for event in host_reads:
        if isinstance(event, tuple):
            step = event[1]
        elif step is not None:
            reading_steps.add(step)  # a read after step `step` ran and before the next one
    log_steps, checkpoint_steps, image_steps = {0, 3, 6, 7}, {3, 7}, {0}  # the last step is logged too
    assert 3 in reading_steps and 6 in reading_steps  # the log steps do read
    assert reading_steps <= log_steps | checkpoint_steps | image_steps
    lines = [json.loads(line)["step"] for line in RunDir(tmp_path / "run").metrics.read_text().splitlines()]
    assert lines == [0, 3, 6, 7]


@pytest.mark.parametrize(
    ("checkpoint_every", "kept", "named"),
    [
        (3, [3], "step_0000003.pt"),  # the checkpoint after step 5 would hold NaN weights: it stops there
        (100, [], "no checkpoint was written yet"),  # no checkpoint in the interval: the log step 8 stops it
    ],
)
def test_the_nan_guard_stops_at_the_next_read_and_never_saves_touched_weights(
    cli, synth_dir, tmp_path, monkeypatch, checkpoint_every, kept, named
):
    # lr NaN from step 4: step 4's update makes the weights NaN, step 5's loss is the first non-finite one
    original = step_module.lr_factor
    monkeypatch.setattr(step_module, "lr_factor", lambda s, *a: float("nan") if s >= 4 else original(s, *a))
    run = tmp_path / "run"
    overrides = [*TINY, "training.iters=12", "training.log_every=4", f"training.checkpoint_every={checkpoint_every}"]
    result = cli("train", "demo", "--data-dir", synth_dir, "--out", run, *set_options(*overrides))
    assert result.exit_code == 1
    assert "at step 5" in result.output and named in result.output
    assert [s for s, _ in RunDir(run).list_checkpoints()] == kept
    for _, path in RunDir(run).list_checkpoints():
        assert all(torch.isfinite(t).all() for t in load_checkpoint(path)["model"].values())
    assert [json.loads(line)["step"] for line in RunDir(run).metrics.read_text().splitlines()] == [0, 4]


def test_data_loader_workers_give_the_same_run(synth_dir, tmp_path):
    runs = [
        train(tiny_config("training.iters=2", f"training.num_workers={n}"), tmp_path / f"w{n}", data_dir=synth_dir,
              show_progress=False, record_ranks=True)
        for n in (0, 2)
    ]  # fmt: skip
    a, b = (load_checkpoint(r.last_checkpoint)["model"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    samples = [(r.run_dir / "samples_rank0.txt").read_text() for r in runs]
    assert samples[0] == samples[1]


# ------------------------------------------------------------------------------------------------ CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_a_training_step_on_a_gpu_never_synchronises(precision):
    cfg = tiny_config(f"training.mixed_precision={precision}")
    runner = StepRunner(cfg, make_accelerator(precision))
    images = (torch.rand(2, 3, 35, 35) * 2 - 1).cuda()
    for step in range(3):  # first calls allocate and pick kernels
        runner(step, images)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        scalars = [runner(step, images) for step in range(3, 8)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(math.isfinite(runner.read(s)["loss"]) for s in scalars)


@pytest.mark.cuda
def test_batches_arrive_pinned_on_a_gpu(synth_dir, tmp_path):
    trainer = Trainer(tiny_config("training.iters=2"), tmp_path / "run", data_dir=synth_dir, show_progress=False)
    batch = next(iter(trainer._batches()))
    assert batch["imgs"].is_pinned()
