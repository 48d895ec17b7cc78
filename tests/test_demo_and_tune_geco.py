"""`emorl demo` with a tiny budget, and `emorl tune-geco`'s rule and command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from helpers import set_options

from emorl_cli import demo as demo_module
from emorl_cli.config import load_config
from emorl_cli.data.synth import synthesize
from emorl_cli.tune_geco import propose_target, read_nll_curve

SMALL = [
    "model.z_size=8",
    "training.batch_size=2",
    "training.warmup=2",
    "training.image_every=100000",
    "geco.warm_start=1",
    "eval.batch_size=16",
]


def test_demo_with_a_tiny_budget_ends_in_time_with_every_output(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module, "DEMO_TRAIN_IMAGES", 64)
    monkeypatch.setattr(demo_module, "DEMO_TEST_IMAGES", 16)
    out = tmp_path / "demo"
    args = ["demo", "--out", out, "--minutes", "0.4"] + set_options(*SMALL)
    result = cli(*args)
    assert result.exit_code == 0, result.output
    for label in ("FG-ARI", "MSE", "KL", "checkpoint", "results", "viz", "gif_sheet"):
        assert label in result.output
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["num_images"] == 16 and 0 <= results["metrics"]["mse"]["mean"] < 1
    assert (out / "viz" / "index.html").exists() and len(list((out / "viz").glob("image_*.png"))) == 8
    assert len(list((out / "gifs").glob("slot_*_row_*.gif"))) == 4 * 4
    assert (out / "data" / "tetrominoes.h5").exists()
    run = next(out.glob("run-*"))
    assert list((run / "checkpoints").glob("step_*.pt"))


def test_demo_with_a_checkpoint_skips_training(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module, "DEMO_TRAIN_IMAGES", 64)
    monkeypatch.setattr(demo_module, "DEMO_TEST_IMAGES", 16)
    from pathlib import Path

    golden = Path(__file__).parent / "data" / "golden" / "tetrominoes.pth"
    result = cli("demo", "--out", tmp_path / "d", "--checkpoint", golden, "--config", "tetrominoes")
    assert result.exit_code == 0, result.output
    assert not list((tmp_path / "d").glob("run-*"))
    assert "FG-ARI" in result.output


def test_demo_refuses_a_budget_that_is_not_positive(cli, tmp_path):
    result = cli("demo", "--out", tmp_path / "demo", "--minutes", "0")
    assert result.exit_code == 1 and "--minutes must be positive, got 0" in result.output
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(
    ("native", "overrides", "expected"),
    [(True, [], "bf16"), (False, [], "no"), (False, ["training.mixed_precision=bf16"], "bf16")],
)
def test_the_demo_trains_in_bf16_only_where_the_cpu_has_it(monkeypatch, tmp_path, native, overrides, expected):
    assert load_config("demo").training.mixed_precision == "bf16"
    monkeypatch.setattr(demo_module, "cpu_has_native_bf16", lambda: native)
    cfg = demo_module.demo_config(tmp_path, overrides)
    assert cfg.training.mixed_precision == expected
    assert cfg.data.data_dir == tmp_path / "data"


def test_the_time_kept_for_evaluation_follows_the_test_time_refinement_steps():
    full = demo_module.RESERVE_EVAL + demo_module.RESERVE_VIZ + demo_module.RESERVE_GIFS
    assert demo_module._reserve(300, 3) == pytest.approx(full)
    assert demo_module._reserve(300, 0) == pytest.approx(full / 4)
    assert demo_module._reserve(10, 3) == pytest.approx(4.0)  # at most 40% of a tiny budget


def test_the_rule_puts_the_target_between_the_initial_and_the_plateau_nll():
    steps = np.arange(200)
    # background learned fast (1.0 → 0.2), then a slow decline to 0.1
    nll = 0.1 + 0.8 * np.exp(-steps / 10) + 0.1 * np.exp(-steps / 150)
    proposal = propose_target(steps, nll, pixels=3675, pilot_steps=200)
    assert proposal.plateau < proposal.target < proposal.background < proposal.initial
    assert proposal.total_target == pytest.approx(proposal.target * 3675, abs=1e-2)
    assert 5 <= proposal.background_step <= 60


def test_a_flat_pilot_is_an_error():
    from emorl_cli.errors import TrainingError

    with pytest.raises(TrainingError, match="did not go down"):
        propose_target(np.arange(50), np.linspace(1.0, 1.1, 50), pixels=10, pilot_steps=50)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tg")
    synthesize("tetrominoes", folder, 64, 8, seed=1)
    return folder


def test_the_pilot_curve_leaves_out_evaluation_rows(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 0, "nll": 300.0, "loss": 1.0},
        {"step": 25, "nll": 150.0, "loss": 1.0},
        {"step": 25, "split": "test", "nll": -9000.0, "fg_ari": 0.1},  # periodic evaluation (eval_every)
        {"step": 50, "nll": 75.0, "loss": 1.0},
        {"step": 75, "nll": None, "loss": None},  # a step whose loss was not finite (written as null)
    ]
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    steps, nll = read_nll_curve(metrics, pixels=3)
    assert steps.tolist() == [0, 25, 50] and nll.tolist() == [100.0, 50.0, 25.0]


def test_tune_geco_command_writes_a_valid_config_and_is_reproducible(cli, data_dir, tmp_path):
    common = [
        "tune-geco",
        "demo",
        "--data-dir",
        data_dir,
        "--pilot-steps",
        "16",
        "--set",
        "training.lr=2e-3",
        "--set",
        "training.mixed_precision=no",  # demo.yaml's bf16 is emulated on CPUs without it: minutes, not seconds
    ] + set_options(*SMALL)
    first = cli(*common, "--out", tmp_path / "a", "--write-config", tmp_path / "tuned.yaml")
    assert first.exit_code == 0, first.output
    proposal = json.loads((tmp_path / "a" / "proposal.json").read_text())
    assert proposal["plateau"] <= proposal["target"] <= proposal["initial"]
    assert (tmp_path / "a" / "nll_curve.png").stat().st_size > 1000
    assert cli("config", "validate", tmp_path / "tuned.yaml").exit_code == 0
    tuned = yaml.safe_load((tmp_path / "tuned.yaml").read_text())
    assert tuned["geco"] == {**tuned["geco"], "enabled": True, "target": proposal["target"]}
    again = cli(*common, "--out", tmp_path / "b")
    assert again.exit_code == 0
    assert json.loads((tmp_path / "b" / "proposal.json").read_text()) == proposal
    # a second call on the same folder resumes the finished pilot instead of training again
    resumed = cli(*common, "--out", tmp_path / "a")
    assert resumed.exit_code == 0
    assert json.loads((tmp_path / "a" / "proposal.json").read_text()) == proposal


def test_tune_geco_refuses_slot_attention(cli, data_dir, tmp_path):
    result = cli("tune-geco", "slot_attention_tetrominoes", "--data-dir", data_dir, "--out", tmp_path / "x")
    assert result.exit_code == 1 and "EfficientMORL only" in result.output
    assert load_config("slot_attention_tetrominoes").model.kind == "slot_attention"


def test_demo_multi_dsprites_with_a_tiny_budget_makes_its_own_data_and_every_output(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module, "DEMO_TRAIN_IMAGES", 32)
    monkeypatch.setattr(demo_module, "DEMO_TEST_IMAGES", 8)
    out = tmp_path / "md"
    tiny = [*SMALL, "model.decoder_width=8", "model.encoder_width=8", "eval.num_images=8"]
    result = cli("demo", "multi_dsprites", "--out", out, "--minutes", "0.5", *set_options(*tiny))
    assert result.exit_code == 0, result.output
    assert "emorl demo multi_dsprites" in result.output
    assert (out / "data" / "multi_dsprites_colored_on_grayscale.h5").exists()
    assert not (out / "data" / "tetrominoes.h5").exists()
    config = yaml.safe_load(next(out.glob("run-*/config.yaml")).read_text())
    assert config["data"]["dataset"] == "multi_dsprites" and config["model"]["input_size"] == [3, 64, 64]
    assert json.loads((out / "eval" / "results.json").read_text())["num_images"] == 8
    assert (out / "viz" / "index.html").exists()


def test_demo_data_are_made_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module, "DEMO_TRAIN_IMAGES", 8)
    monkeypatch.setattr(demo_module, "DEMO_TEST_IMAGES", 4)
    calls = []
    monkeypatch.setattr(demo_module, "synthesize", lambda *args, **kw: calls.append(args) or synthesize(*args, **kw))
    for dataset in ("tetrominoes", "multi_dsprites", "tetrominoes", "multi_dsprites"):
        demo_module.ensure_data(demo_module.demo_config(tmp_path, dataset=dataset, data_dir=tmp_path / "shared"))
    assert [args[0] for args in calls] == ["tetrominoes", "multi_dsprites"]
    assert len(list((tmp_path / "shared").glob("*.h5"))) == 4


def test_demo_refuses_an_unknown_dataset_naming_the_choices(cli, tmp_path):
    result = cli("demo", "clevr6", "--out", tmp_path / "demo")
    assert result.exit_code == 1
    assert "no demo for dataset 'clevr6'; choose one of: tetrominoes, multi_dsprites" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "demo").exists()


def test_demo_help_lists_the_datasets_and_their_budgets(cli):
    result = cli("demo", "--help")
    assert result.exit_code == 0
    assert "tetrominoes" in result.output and "multi_dsprites" in result.output


def test_each_demo_config_is_the_paper_model_on_its_dataset():
    for dataset, spec in demo_module.DEMOS.items():
        cfg = load_config(spec.config)
        assert cfg.data.dataset == dataset and cfg.model.kind == "emorl" and cfg.model.stochastic_layers == 3
        assert spec.minutes <= 20
