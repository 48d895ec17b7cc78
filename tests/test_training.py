"""`emorl train`: schedule, data order, run folder, exact resume, non-finite loss, checkpoint safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, set_options, tiny_config

from emorl_cli.checkpoint import load_checkpoint
from emorl_cli.config import load_config
from emorl_cli.data.synth import synthesize
from emorl_cli.errors import TrainingError
from emorl_cli.training import step as step_module
from emorl_cli.training.loop import train
from emorl_cli.training.order import GlobalBatchOrder, StepBatchSampler
from emorl_cli.training.rundir import RunDir
from emorl_cli.training.schedule import lr_factor


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    synthesize("tetrominoes", folder, 64, 16, seed=3)
    return folder


def params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


# ------------------------------------------------------------------------------------------------ pieces


def test_lr_schedule_matches_the_original():
    # GradualWarmupScheduler(multiplier=1, total_epoch=warmup) then 0.5 ** ((step - warmup) / 100000)
    assert lr_factor(0, 10_000) == 0.0
    assert lr_factor(5_000, 10_000) == pytest.approx(0.5)
    assert lr_factor(10_000, 10_000) == pytest.approx(1.0)
    assert lr_factor(110_000, 10_000) == pytest.approx(0.5)
    assert lr_factor(210_000, 10_000) == pytest.approx(0.25)
    assert lr_factor(7, 0) == pytest.approx(0.5 ** (7 / 100_000))


def test_curriculum_uses_the_last_entry_at_or_before_the_step():
    cfg = load_config("multi_dsprites").training
    assert [cfg.refinement_iters_at(s) for s in (0, 99_999, 100_000, 250_000)] == [3, 3, 1, 1]


def test_processes_read_disjoint_shares_of_the_same_global_batch():
    order = GlobalBatchOrder(num_samples=50, global_batch=8, seed=1)
    for step in (0, 5, 6, 13):
        shares = [order.local_indices(step, rank, 2) for rank in range(2)]
        assert set(shares[0]).isdisjoint(shares[1])
        assert np.array_equal(np.concatenate(shares), order.global_indices(step))
    # one epoch (6 steps) visits 48 distinct samples; the next epoch is another permutation
    epoch = np.concatenate([order.global_indices(s) for s in range(6)])
    assert len(set(epoch.tolist())) == 48
    assert not np.array_equal(order.global_indices(0), order.global_indices(6))
    sampler = StepBatchSampler(order, 3, 7, rank=1, world_size=2)
    assert len(sampler) == 4 and list(sampler)[0] == order.local_indices(3, 1, 2).tolist()


def test_uneven_batch_split_is_an_error():
    from emorl_cli.errors import TrainingError
    from emorl_cli.training.order import local_batch_size

    with pytest.raises(TrainingError, match="does not split evenly over 3 processes"):
        local_batch_size(32, 3)


# ------------------------------------------------------------------------------------------------ runs


def test_train_cli_leaves_a_run_folder_and_resumes(cli, synth_dir, tmp_path):
    run = tmp_path / "run"
    args = ["train", "demo", "--data-dir", synth_dir, "--out", run] + set_options(*TINY)
    result = cli(*args, "--set", "training.iters=4")
    assert result.exit_code == 0, result.output
    folder = RunDir(run)
    assert load_config(folder.config).training.iters == 4
    assert [s for s, _ in folder.list_checkpoints()] == [2, 4]
    assert any(folder.tensorboard.glob("events.out.tfevents.*"))
    lines = [json.loads(line) for line in folder.metrics.read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2, 3]
    assert {"loss", "nll", "kl", "mse", "lr", "geco_beta", "geco_C_ema"} <= set(lines[-1])
    assert "checkpoint:" in result.output

    again = cli(*args, "--set", "training.iters=4")
    assert again.exit_code == 1 and "--resume" in again.output

    resumed = cli(*args, "--set", "training.iters=6", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "steps 4→6" in resumed.output
    assert [s for s, _ in folder.list_checkpoints()] == [2, 4, 6]
    assert [json.loads(line)["step"] for line in folder.metrics.read_text().splitlines()] == list(range(6))


def test_two_steps_resume_two_steps_equals_four_steps(synth_dir, tmp_path):
    straight = train(tiny_config("training.iters=4"), tmp_path / "a", data_dir=synth_dir, show_progress=False)
    train(tiny_config("training.iters=2"), tmp_path / "b", data_dir=synth_dir, show_progress=False)
    resumed = train(
        tiny_config("training.iters=4"), tmp_path / "b", data_dir=synth_dir, resume=True, show_progress=False
    )
    assert resumed.start_step == 2
    a, b = load_checkpoint(straight.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=1e-6, msg=name)
    assert {k: float(v) for k, v in a["geco"].items()} == {k: float(v) for k, v in b["geco"].items()}
    assert a["step"] == b["step"] == 4
    # the run really moved: different from the initial weights
    init = train(tiny_config("training.iters=1"), tmp_path / "c", data_dir=synth_dir, show_progress=False)
    assert any(not torch.equal(a["model"][k], v) for k, v in params(init.last_checkpoint).items())


def test_same_seed_same_run_other_seed_other_run(synth_dir, tmp_path):
    one = train(tiny_config("training.iters=2"), tmp_path / "1", data_dir=synth_dir, show_progress=False)
    two = train(tiny_config("training.iters=2"), tmp_path / "2", data_dir=synth_dir, show_progress=False)
    other = train(
        tiny_config("training.iters=2", "training.seed=9"), tmp_path / "3", data_dir=synth_dir, show_progress=False
    )
    p1, p2, p3 = params(one.last_checkpoint), params(two.last_checkpoint), params(other.last_checkpoint)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert any(not torch.equal(p1[k], p3[k]) for k in p1)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(cli, synth_dir, tmp_path, monkeypatch):
    original = step_module.lr_factor
    monkeypatch.setattr(step_module, "lr_factor", lambda s, *a: float("nan") if s >= 2 else original(s, *a))
    run = tmp_path / "run"
    args = ["train", "demo", "--data-dir", synth_dir, "--out", run] + set_options(*TINY)
    result = cli(*args, "--set", "training.iters=6")
    assert result.exit_code == 1
    assert "at step 3" in result.output and "step_0000002.pt" in result.output
    assert "Traceback" not in result.output
    kept = RunDir(run).latest_checkpoint()
    assert kept.name == "step_0000002.pt"
    assert all(torch.isfinite(t).all() for t in params(kept).values())


def test_a_checkpoint_cut_off_while_writing_leaves_the_previous_one_usable(synth_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_config("training.iters=2"), run, data_dir=synth_dir, show_progress=False)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config("training.iters=4"), run, data_dir=synth_dir, resume=True, show_progress=False)
    monkeypatch.undo()
    folder = RunDir(run)
    assert [s for s, _ in folder.list_checkpoints()] == [2]
    assert not [p for p in folder.checkpoints.iterdir() if p.name.endswith(".tmp")]
    resumed = train(tiny_config("training.iters=4"), run, data_dir=synth_dir, resume=True, show_progress=False)
    assert resumed.start_step == 2 and load_checkpoint(resumed.last_checkpoint)["step"] == 4


def test_resume_with_a_different_model_is_refused(cli, synth_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_config("training.iters=2"), run, data_dir=synth_dir, show_progress=False)
    args = ["train", "demo", "--data-dir", synth_dir, "--resume", run] + set_options(*TINY)
    result = cli(*args, "--set", "model.z_size=12", "--set", "training.iters=4")
    assert result.exit_code == 1 and "model section" in result.output


def test_slot_attention_trains_with_its_own_loss(synth_dir, tmp_path):
    cfg = load_config(
        "slot_attention_tetrominoes",
        [
            "model.z_size=8",
            "training.batch_size=4",
            "training.iters=2",
            "training.warmup=0",
            "training.image_every=1000",
        ],
    )
    result = train(cfg, tmp_path / "sa", data_dir=synth_dir, show_progress=False)
    assert result.final_scalars["loss"] > 0 and "geco_beta" not in result.final_scalars
    assert load_checkpoint(result.last_checkpoint)["geco"] is None


def test_bf16_mixed_precision_keeps_the_fragile_sums_in_float32(synth_dir, tmp_path):
    from emorl_cli.model import Objective, build_model

    cfg = tiny_config("training.iters=2", "training.mixed_precision=bf16")
    model = build_model(cfg.model)
    images = torch.rand(2, 3, 35, 35) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, Objective.elbo(), refinement_iters=1)
    assert out.nll.dtype == out.kl.dtype == out.mask_logprobs.dtype == torch.float32
    result = train(cfg, tmp_path / "bf16", data_dir=synth_dir, show_progress=False)
    assert np.isfinite(result.final_scalars["loss"])


def test_a_run_from_before_a_model_field_existed_resumes(synth_dir, tmp_path):
    first = train(tiny_config("training.iters=2"), tmp_path / "old", data_dir=synth_dir, show_progress=False)
    state = load_checkpoint(first.last_checkpoint)
    del state["config"]["model"]["encoder_width"]  # as written by a version without the field
    torch.save(state, first.last_checkpoint)
    resumed = train(tiny_config("training.iters=3"), tmp_path / "old", data_dir=synth_dir, resume=True)
    assert resumed.start_step == 2 and resumed.steps == 1
    with pytest.raises(TrainingError, match="model section"):  # a real difference is still refused
        train(tiny_config("training.iters=4", "model.z_size=4"), tmp_path / "old", data_dir=synth_dir, resume=True)
