"""Evaluation during training (`training.eval_every`), best.pt, and the wall-clock budget of a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, set_options, tiny_config

from emorl_cli.checkpoint import load_checkpoint
from emorl_cli.data.synth import synthesize
from emorl_cli.training.loop import train
from emorl_cli.training.progress import NullTrainingProgress
from emorl_cli.training.run_logs import MetricsLog, eval_rows, read_rows, training_rows
from emorl_cli.training.rundir import RunDir

EVAL = ["training.eval_every=2", "eval.num_images=6", "eval.batch_size=4"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    synthesize("tetrominoes", folder, 32, 8, seed=5)
    return folder


@pytest.fixture(scope="module")
def five_steps(synth_dir, tmp_path_factory) -> RunDir:
    """A run of 5 steps evaluated every 2 steps (and at the end), a checkpoint after every step."""
    run = tmp_path_factory.mktemp("run") / "five"
    cfg = tiny_config("training.iters=5", "training.checkpoint_every=1", *EVAL)
    train(cfg, run, data_dir=synth_dir, show_progress=False)
    return RunDir(run)


def test_eval_rows_appear_after_every_eval_every_steps_and_at_the_end(five_steps):
    rows = eval_rows(five_steps.metrics)
    assert [r["step"] for r in rows] == [2, 4, 5]
    for row in rows:
        assert {"fg_ari", "ari", "mse", "kl", "nll", "loss", "seconds", "eval_seconds"} <= set(row)
        assert row["num_images"] == 6 and 0 < row["eval_seconds"] < row["seconds"]
        assert -1 <= row["fg_ari"] <= 1 and row["mse"] > 0
    # the training rows are unchanged: one per step, no test figures among them
    assert [r["step"] for r in training_rows(five_steps.metrics)] == [0, 1, 2, 3, 4]
    assert all("fg_ari" not in r for r in training_rows(five_steps.metrics))


def test_eval_figures_go_to_tensorboard(five_steps):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(five_steps.tensorboard))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"eval/fg_ari", "eval/ari", "eval/mse", "eval/kl"} <= set(scalars)
    logged = [(e.step, e.value) for e in events.Scalars("eval/fg_ari")]
    expected = [(r["step"], r["fg_ari"]) for r in eval_rows(five_steps.metrics)]
    assert [s for s, _ in logged] == [s for s, _ in expected]
    np.testing.assert_allclose([v for _, v in logged], [v for _, v in expected], rtol=1e-6)


def test_best_pt_holds_the_weights_of_the_best_evaluation(five_steps):
    rows = eval_rows(five_steps.metrics)
    best_step = rows[int(np.argmax([r["fg_ari"] for r in rows]))]["step"]
    best = load_checkpoint(five_steps.checkpoints / "best.pt")
    assert best["step"] == best_step
    assert best["extra"]["eval"]["fg_ari"] == pytest.approx(max(r["fg_ari"] for r in rows))
    same_step = load_checkpoint(five_steps.checkpoint_path(best_step))
    for name, tensor in same_step["model"].items():
        torch.testing.assert_close(best["model"][name], tensor, rtol=0, atol=0, msg=name)
    # best.pt is not a step checkpoint: never resumed from, never pruned
    assert all(p.name != "best.pt" for _, p in five_steps.list_checkpoints())


def test_the_figures_are_those_of_emorl_eval_ari_on_the_same_checkpoint(five_steps, synth_dir, cli, tmp_path):
    row = next(r for r in eval_rows(five_steps.metrics) if r["step"] == 4)
    out = tmp_path / "eval"
    args = ["eval", "ari", "--checkpoint", five_steps.checkpoint_path(4), "--data-dir", synth_dir]
    result = cli(*args, "--num-images", "6", "--batch-size", "4", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    for name in ("fg_ari", "ari", "mse", "kl", "nll"):
        assert metrics[name]["mean"] == pytest.approx(row[name], rel=1e-5, abs=1e-7), name


def test_resumed_run_evaluates_exactly_as_an_uninterrupted_one(five_steps, synth_dir, tmp_path):
    run = tmp_path / "resumed"
    train(tiny_config("training.iters=4", "training.checkpoint_every=1", *EVAL), run, data_dir=synth_dir)
    # as if killed after evaluating step 5 but before its checkpoint, while appending a line
    with RunDir(run).metrics.open("a") as handle:
        handle.write('{"step": 5, "split": "test", "fg_ari": 0.99, "seconds": 99}\n{"step": 5, "lo')
    train(tiny_config("training.iters=5", "training.checkpoint_every=1", *EVAL), run, data_dir=synth_dir, resume=True)
    straight, resumed = eval_rows(five_steps.metrics), eval_rows(RunDir(run).metrics)
    assert [r["step"] for r in resumed] == [2, 4, 5]
    for a, b in zip(straight, resumed, strict=True):
        for name in ("fg_ari", "ari", "mse", "kl"):
            assert b[name] == pytest.approx(a[name], rel=1e-6), (a["step"], name)
    best = load_checkpoint(RunDir(run).checkpoints / "best.pt")
    assert best["step"] == load_checkpoint(five_steps.checkpoints / "best.pt")["step"]
    assert not read_rows(RunDir(run).metrics)[1]  # no torn line left
    seconds = [r["seconds"] for r in read_rows(RunDir(run).metrics)[0]]
    assert seconds == sorted(seconds) and max(seconds) < 99  # wall time goes on across the resume


def test_without_masks_the_best_checkpoint_is_the_lowest_test_loss(synth_dir, tmp_path):
    import h5py

    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(synth_dir / "tetrominoes.h5", folder / "tetrominoes.h5")
    with h5py.File(synth_dir / "tetrominoes_test.h5") as source, h5py.File(folder / "tetrominoes_test.h5", "w") as f:
        f.create_dataset("test/imgs", data=source["test/imgs"][:])  # no masks
    run = RunDir(tmp_path / "nomasks")
    cfg = tiny_config("training.iters=4", "training.checkpoint_every=1", *EVAL)
    train(cfg, run.root, data_dir=folder, show_progress=False)
    rows = eval_rows(run.metrics)
    assert rows and all("fg_ari" not in r and "loss" in r for r in rows)
    best_step = rows[int(np.argmin([r["loss"] for r in rows]))]["step"]
    assert load_checkpoint(run.checkpoints / "best.pt")["step"] == best_step


def test_eval_every_zero_evaluates_nothing(synth_dir, tmp_path):
    run = RunDir(tmp_path / "plain")
    train(tiny_config("training.iters=2"), run.root, data_dir=synth_dir, show_progress=False)
    assert eval_rows(run.metrics) == [] and not (run.checkpoints / "best.pt").exists()
    assert json.loads(run.finished.read_text())["reason"] == "iters"


def test_a_time_budget_stops_the_run_and_a_spent_budget_trains_no_more(synth_dir, tmp_path):
    run = RunDir(tmp_path / "timed")
    cfg = tiny_config("training.iters=1000", "training.max_minutes=0.0001", *EVAL)  # 6 ms: one step
    result = train(cfg, run.root, data_dir=synth_dir, show_progress=False)
    assert result.steps == 1 and result.last_checkpoint == run.checkpoint_path(1)
    assert json.loads(run.finished.read_text())["reason"] == "time budget"
    assert [r["step"] for r in eval_rows(run.metrics)] == [1]  # the end of a run is always evaluated
    again = train(cfg, run.root, data_dir=synth_dir, resume=True, show_progress=False)
    assert again.steps == 0 and json.loads(run.finished.read_text())["reason"] == "time budget"


def test_max_minutes_must_be_a_positive_finite_number():
    from emorl_cli.errors import ConfigError

    for bad in ("0", "-1", ".nan", ".inf"):
        with pytest.raises(ConfigError, match="training.max_minutes"):
            tiny_config(f"training.max_minutes={bad}")


# ------------------------------------------------------------------------------ progress of a run


def test_the_progress_sink_gets_every_step_the_log_steps_and_the_last_fg_ari(synth_dir, tmp_path):
    """Oracle: the run's own metrics.jsonl (its evaluation rows) and the step arithmetic of log_every."""
    sink = NullTrainingProgress()
    cfg = tiny_config("training.iters=5", "training.log_every=2", *EVAL)
    train(cfg, tmp_path / "run", data_dir=synth_dir, progress=sink)
    start, *steps = sink.statuses
    assert (start.step, start.total, start.budget_seconds, start.fg_ari) == (0, 5, None, None)
    assert [s.step for s in steps] == [1, 2, 3, 4, 5]
    assert [s.step for s in steps if s.log_step] == [1, 3, 5]  # steps 0, 2, 4 (0-based) and the last
    evals = {r["step"]: r["fg_ari"] for r in eval_rows(RunDir(tmp_path / "run").metrics)}
    assert steps[0].fg_ari is None and steps[1].fg_ari == pytest.approx(evals[2])
    assert steps[2].fg_ari == pytest.approx(evals[2]) and steps[4].fg_ari == pytest.approx(evals[5])
    assert all(s.eta_seconds is not None and s.seconds_left is None for s in steps)
    silent = NullTrainingProgress()
    train(tiny_config("training.iters=1"), tmp_path / "quiet", data_dir=synth_dir, progress=silent, show_progress=False)
    assert silent.statuses == []


def test_a_budgeted_run_reports_minutes_left_and_no_eta(synth_dir, tmp_path):
    sink = NullTrainingProgress()
    train(tiny_config("training.iters=2"), tmp_path / "run", data_dir=synth_dir, progress=sink, max_seconds=600)
    last = sink.statuses[-1]
    assert last.budget_seconds == 600 and last.eta_seconds is None
    assert last.seconds_left == pytest.approx(600 - last.seconds) and 0 < last.seconds < 600


def _train_output(cli, synth_dir, run, *overrides: str) -> list[str]:
    args = ["train", "demo", "--data-dir", synth_dir, "--out", run, *set_options(*TINY, *overrides)]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if line.startswith("step ")]


def test_train_prints_a_plain_line_per_log_step_off_a_terminal(cli, synth_dir, tmp_path):
    lines = _train_output(cli, synth_dir, tmp_path / "run", "training.iters=3", "training.log_every=2", *EVAL)
    assert [line.split()[1] for line in lines] == ["1/3", "3/3"]
    assert all("it/s" in line and "loss " in line and " eta " in line for line in lines)
    assert "FG-ARI" not in lines[0] and "FG-ARI" in lines[1]  # evaluated after step 2


def test_train_with_a_time_budget_shows_minutes_and_never_an_eta(cli, synth_dir, tmp_path):
    lines = _train_output(cli, synth_dir, tmp_path / "run", "training.iters=2", "training.max_minutes=60")
    assert [line.split()[1] for line in lines] == ["1", "2"]
    assert all(" of 60.0 min (" in line and " left)" in line and "eta" not in line for line in lines)


def test_metrics_log_writes_strict_json_with_null_for_non_finite_values(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write(0, {"loss": 1.5, "grad_norm": float("inf")})
    log.write(1, {"loss": float("nan"), "grad_norm": -float("inf"), "lr": 1e-3})

    def refuse(token):
        raise AssertionError(f"{token} is not JSON")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line, parse_constant=refuse) for line in lines] == [
        {"step": 0, "loss": 1.5, "grad_norm": None},
        {"step": 1, "loss": None, "grad_norm": None, "lr": 1e-3},
    ]
    log.truncate_for_resume(1)  # rewrites the kept rows: strict JSON too
    assert [json.loads(line, parse_constant=refuse) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
