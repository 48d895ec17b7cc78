"""Experiment trackers through Accelerate (`training.log_with`, `--log-with`), tested offline.

Oracle: metrics.jsonl. A tracker registered with Accelerate's `register_tracker_class` records every call;
what it received (and what TensorBoard wrote to RUN/tb) must equal the rows of metrics.jsonl, key for key.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
from accelerate.tracking import GeneralTracker, register_tracker_class
from helpers import TINY, error_with_phrases, set_options, tiny_config

from emorl_cli.data.synth import synthesize
from emorl_cli.errors import ConfigError, TrainingError
from emorl_cli.training.loop import train
from emorl_cli.training.run_logs import eval_rows, training_rows
from emorl_cli.training.trackers import flat_config

EVAL = ["training.eval_every=2", "eval.num_images=4", "eval.batch_size=4"]


class RecordingTracker(GeneralTracker):
    """Keeps every call in memory (class-wide, so a test reads what a run's tracker got)."""

    name = "recording"
    requires_logging_directory = False
    runs: list[RecordingTracker] = []

    def __init__(self, run_name: str, **kwargs: Any):
        super().__init__()
        self.run_name = run_name
        self.config: Optional[dict[str, Any]] = None
        self.scalars: list[tuple[int, dict[str, float]]] = []
        self.images: list[tuple[int, str, np.ndarray]] = []
        self.finished = False

    @property
    def tracker(self) -> RecordingTracker:
        return self

    def start(self) -> None:
        RecordingTracker.runs.append(self)

    def store_init_configuration(self, values: dict) -> None:
        self.config = dict(values)

    def log(self, values: dict, step: Optional[int] = None, **kwargs: Any) -> None:
        self.scalars.append((step, dict(values)))

    def log_images(self, values: dict, step: Optional[int] = None, **kwargs: Any) -> None:
        for name, images in values.items():
            for image in images:
                self.images.append((step, name, np.asarray(image)))

    def finish(self) -> None:
        self.finished = True


class FailingTracker(RecordingTracker):
    name = "failing"

    def start(self) -> None:
        raise RuntimeError("no server at http://tracker.invalid")


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # registering twice (a rerun in one process) only replaces the class
    register_tracker_class(RecordingTracker)
    register_tracker_class(FailingTracker)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    synthesize("tetrominoes", folder, 32, 8, seed=5)
    return folder


@pytest.fixture(scope="module")
def recorded_run(synth_dir, tmp_path_factory):
    """Four steps, evaluated every 2, a figure every 2 steps, to the recording tracker and TensorBoard."""
    RecordingTracker.runs.clear()
    run = tmp_path_factory.mktemp("run") / "four"
    cfg = tiny_config("training.iters=4", "training.image_every=2", "training.log_with=[recording, tensorboard]", *EVAL)
    train(cfg, run, data_dir=synth_dir, show_progress=False)
    assert len(RecordingTracker.runs) == 1
    return run, RecordingTracker.runs[0]


def test_the_tracker_receives_every_training_and_evaluation_row_of_metrics_jsonl(recorded_run):
    run, tracker = recorded_run
    got = {}
    for step, values in tracker.scalars:
        prefix = next(iter(values)).split("/")[0]
        assert all(k.startswith(prefix + "/") for k in values)
        got[(prefix, step)] = values
    expected = {}
    for row in training_rows(run / "metrics.jsonl"):
        expected[("train", row["step"])] = {f"train/{k}": v for k, v in row.items() if k not in ("step", "seconds")}
    for row in eval_rows(run / "metrics.jsonl"):
        floats = {k: v for k, v in row.items() if isinstance(v, float) and k != "seconds"}
        expected[("eval", row["step"])] = {f"eval/{k}": v for k, v in floats.items()}
    assert [s for p, s in expected if p == "train"] == [0, 1, 2, 3]
    assert [s for p, s in expected if p == "eval"] == [2, 4]
    assert set(got) == set(expected)
    for key, values in expected.items():
        assert got[key] == pytest.approx(values, rel=1e-6), key
    assert {"eval/fg_ari", "eval/mse", "eval/kl"} <= set(expected[("eval", 4)])
    assert tracker.finished


def test_the_tracker_gets_the_figures_and_the_config(recorded_run):
    run, tracker = recorded_run
    assert [(step, name) for step, name, _ in tracker.images] == [(0, "train/inference"), (2, "train/inference")]
    image = tracker.images[0][2]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert tracker.config["training.iters"] == 4 and tracker.config["model.K"] == 4
    assert tracker.config["training.log_with"] == '["recording", "tensorboard"]'
    assert tracker.run_name == "emorl"


def test_tensorboard_in_run_tb_holds_the_same_numbers(recorded_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = recorded_run
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    loss = {e.step: e.value for e in events.Scalars("train/loss")}
    assert loss == pytest.approx({r["step"]: r["loss"] for r in training_rows(run / "metrics.jsonl")}, rel=1e-5)
    fg_ari = {e.step: e.value for e in events.Scalars("eval/fg_ari")}
    assert fg_ari == pytest.approx({r["step"]: r["fg_ari"] for r in eval_rows(run / "metrics.jsonl")}, rel=1e-5)
    assert "train/inference" in events.Tags()["images"]


def test_log_with_on_the_command_line_reaches_the_tracker_and_none_keeps_only_metrics(cli, synth_dir, tmp_path):
    RecordingTracker.runs.clear()
    sets = set_options(*TINY, "training.iters=2")
    result = cli("train", "demo", "--data-dir", synth_dir, "--out", tmp_path / "a", "--log-with", "recording", *sets)
    assert result.exit_code == 0, result.output
    assert len(RecordingTracker.runs) == 1 and [s for s, _ in RecordingTracker.runs[0].scalars] == [0, 1]
    assert not (tmp_path / "a" / "tb").exists()  # only the trackers named
    result = cli("train", "demo", "--data-dir", synth_dir, "--out", tmp_path / "b", "--log-with", "none", *sets)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "b" / "tb").exists() and len(training_rows(tmp_path / "b" / "metrics.jsonl")) == 2


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_whose_package_is_missing_is_one_line_naming_the_pip_install(cli, synth_dir, tmp_path):
    sets = set_options(*TINY, "training.iters=2")
    args = ["--data-dir", synth_dir, "--out", tmp_path / "run", "--log-with", "tensorboard,wandb", *sets]
    error_with_phrases(cli("train", "demo", *args), "'wandb'", "pip install wandb")
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before it started
    sweep = ["--seeds", "1", "--out", tmp_path / "sweep", "--data-dir", synth_dir, "--log-with", "wandb", *sets]
    error_with_phrases(cli("sweep", "demo", *sweep), "pip install wandb")
    assert not (tmp_path / "sweep").exists()


def test_unknown_and_failing_trackers_are_one_line_and_free_the_run_folder(cli, synth_dir, tmp_path):
    sets = set_options(*TINY, "training.iters=2")
    run = ["--data-dir", synth_dir, "--out", tmp_path / "run", *sets]
    error_with_phrases(cli("train", "demo", *run, "--log-with", "nosuch"), "'nosuch'", "does not know", "tensorboard")
    error_with_phrases(
        cli("train", "demo", *run, "--log-with", "failing"), "failing tracker did not start", "no server"
    )
    result = cli("train", "demo", *run, "--log-with", "recording")  # the folder was let go
    assert result.exit_code == 0, result.output


def test_config_names_and_the_flat_hyperparameters():
    assert tiny_config().training.log_with == ["tensorboard"]
    assert tiny_config("training.log_with=wandb,mlflow,wandb").training.log_with == ["wandb", "mlflow"]
    assert tiny_config("training.log_with=[]").training.log_with == []
    flat = flat_config({"a": {"b": 1, "c": [1, 2], "d": None}, "e": "x"})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "a.d": "null", "e": "x"}
    with pytest.raises(ConfigError):
        from emorl_cli.training.trackers import check_trackers

        check_trackers(["nosuch"])
    assert issubclass(ConfigError, Exception) and issubclass(TrainingError, Exception)
