"""Config models, `emorl config show|validate|convert`, overrides and cross-field checks."""

from pathlib import Path

import pytest
import yaml

from emorl_cli.config import config_to_dict, load_config, shipped_config_names
from emorl_cli.original_config import convert_original_file

DATA = Path(__file__).parent / "data" / "original_configs"
SHIPPED = shipped_config_names()


def test_every_dataset_and_model_is_shipped():
    expected = {
        "tetrominoes",
        "multi_dsprites",
        "clevr6",
        "clevr6_128",
        "demo",
        "slot_attention_tetrominoes",
        "slot_attention_multi_dsprites",
        "slot_attention_clevr6",
    }
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_show_every_shipped_config(cli, name):
    result = cli("config", "show", name)
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown == config_to_dict(load_config(name))
    assert set(shown) == {"data", "model", "geco", "training", "eval"}


def test_paper_hyperparameters():
    t = load_config("tetrominoes")
    assert (t.model.K, t.model.z_size, t.model.input_size, t.model.stochastic_layers) == (4, 32, (3, 35, 35), 3)
    assert t.model.image_decoder == "small" and t.model.log_scale == pytest.approx(-1.2039728)
    assert t.geco_total_target() == pytest.approx(-4500, abs=1e-3)
    assert t.training.iters == 200_000 and t.training.refinement_iters_at(150_000) == 3
    m = load_config("multi_dsprites")
    assert (m.model.K, m.model.z_size, m.geco.enabled, m.model.refinement_iters) == (6, 64, False, 1)
    assert m.training.refinement_iters_at(99_999) == 3 and m.training.refinement_iters_at(100_000) == 1
    c = load_config("clevr6")
    assert (c.model.K, c.model.image_likelihood, c.geco.target, c.data.clevr_crop) == (7, "gmm", -2.206, True)
    assert load_config("clevr6_128").model.K == 11
    for cfg in (t, m, c):
        assert (cfg.training.batch_size, cfg.training.lr, cfg.training.clip_grad_norm) == (32, 4e-4, 5.0)
        assert cfg.training.warmup == 10_000


def test_validate_ok(cli):
    result = cli("config", "validate", "tetrominoes")
    assert result.exit_code == 0
    assert "ok" in result.output


def _write(tmp_path, mutate) -> Path:
    raw = config_to_dict(load_config("tetrominoes"))
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


BAD = {
    "unknown key": (lambda r: r["model"].update(colour="red"), "model.colour", "unknown key"),
    "wrong type": (lambda r: r["model"].update(K="four"), "model.K", "integer"),
    "prior++ with bottom-up prior": (
        lambda r: r["model"].update(bottom_up_prior=True),
        "model.reverse_prior_plusplus",
        "model.bottom_up_prior",
    ),
    "curriculum not increasing": (
        lambda r: r["training"].update(refinement_curriculum=[[0, 3], [0, 1]]),
        "training.refinement_curriculum",
        "increasing",
    ),
    "K below the entities": (lambda r: r["model"].update(K=3), "model.K", "4 entities"),
    "big decoder at 35": (lambda r: r["model"].update(image_decoder="big"), "model.image_decoder", "96x96"),
    "negative lr": (lambda r: r["training"].update(lr=-1.0), "training.lr", "greater than 0"),
    "zero image size": (lambda r: r["data"].update(image_size=0), "data.image_size", "greater than 0"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_validate_rejects(cli, tmp_path, case):
    mutate, field, phrase = BAD[case]
    result = cli("config", "validate", _write(tmp_path, mutate))
    assert result.exit_code == 1
    assert f"• {field}" in result.output or field in result.output
    assert phrase in result.output
    assert "Traceback" not in result.output


def test_validate_lists_every_bad_field(cli, tmp_path):
    def two_bad(r):
        r["model"]["colour"] = "red"
        r["training"]["lr"] = "fast"

    result = cli("config", "validate", _write(tmp_path, two_bad))
    assert result.exit_code == 1
    assert "• model.colour" in result.output and "• training.lr" in result.output


def test_set_overrides_with_dotted_keys(cli):
    result = cli("config", "show", "tetrominoes", "--set", "training.iters=7", "--set", "model.K=5")
    assert result.exit_code == 0
    shown = yaml.safe_load(result.output)
    assert shown["training"]["iters"] == 7 and shown["model"]["K"] == 5


def test_set_override_is_type_checked(cli):
    result = cli("config", "show", "tetrominoes", "--set", "training.iters=many")
    assert result.exit_code == 1
    assert "training.iters" in result.output


def test_set_override_needs_a_dotted_key(cli):
    result = cli("config", "show", "tetrominoes", "--set", "iters=5")
    assert result.exit_code == 1
    assert "dotted" in result.output


def test_missing_file_is_a_clear_error(cli, tmp_path):
    result = cli("config", "validate", tmp_path / "nope.yaml")
    assert result.exit_code == 1
    assert "does not exist" in result.output


@pytest.mark.parametrize(
    "original, ours",
    [
        ("tetrominoes_train_EMORL.json", "tetrominoes"),
        ("tetrominoes_test_EMORL.json", "tetrominoes"),
        ("clevr6_96_train_EMORL.json", "clevr6"),
        ("multi_dsprites_train_SlotAttention.json", "slot_attention_multi_dsprites"),
    ],
)
def test_convert_original_json_equals_shipped(original, ours):
    converted = config_to_dict(convert_original_file(DATA / original))
    expected = config_to_dict(load_config(ours))
    if "test" in original:  # a test JSON says masks: true, which our shipped config also loads
        assert converted["data"]["load_masks"] is True
    assert converted == expected


def test_convert_cli_writes_a_valid_yaml(cli, tmp_path):
    out = tmp_path / "t.yaml"
    result = cli("config", "convert", DATA / "tetrominoes_train_EMORL.json", "--out", out)
    assert result.exit_code == 0, result.output
    assert cli("config", "validate", out).exit_code == 0
    assert yaml.safe_load(out.read_text())["geco"]["target"] == pytest.approx(-4500 / 3675, abs=1e-6)


def test_convert_rejects_a_non_original_file(cli, tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    result = cli("config", "convert", path)
    assert result.exit_code == 1
    assert "not an original EfficientMORL config" in result.output


def test_an_unquoted_no_for_mixed_precision_means_no():
    from emorl_cli.config import load_config

    assert load_config("demo", ["training.mixed_precision=no"]).training.mixed_precision == "no"
    assert load_config("demo", ["training.mixed_precision=bf16"]).training.mixed_precision == "bf16"


def test_test_time_refinement_steps_come_from_eval_else_model():
    from emorl_cli.config import load_config

    assert load_config("tetrominoes", ["eval.refinement_iters=null"]).test_refinement_iters() == 3
    assert load_config("tetrominoes", ["eval.refinement_iters=0"]).test_refinement_iters() == 0
    assert load_config("tetrominoes", ["eval.refinement_iters=2"]).test_refinement_iters() == 2
