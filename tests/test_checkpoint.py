"""Checkpoints: import of the original .pth files, our own format, RNG state, config conversion."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from emorl_cli.checkpoint import (
    convert_original_state,
    is_original_checkpoint,
    load_checkpoint,
    load_for_inference,
    model_config_from_original,
    model_from_original,
    restore_rng_state,
    save_checkpoint,
)
from emorl_cli.config import ModelConfig, load_config
from emorl_cli.errors import CheckpointError, ConfigError
from emorl_cli.geco import GECO
from emorl_cli.model import EfficientMORL, SlotAttention, build_model

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"


def golden_config(name: str) -> ModelConfig:
    return ModelConfig(**model_config_from_original(json.loads((GOLDEN / f"{name}.json").read_text())))


def fixed_noise(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(tuple(shape), generator=generator)


def tetrominoes_config(model_cfg: ModelConfig):
    raw = load_config("tetrominoes").model_dump(mode="json")
    raw["model"] = model_cfg.model_dump(mode="json")
    if model_cfg.kind == "slot_attention":
        raw["geco"]["enabled"] = False
    from emorl_cli.config import config_from_dict

    return config_from_dict(raw)


# ---------------------------------------------------------------------------------------- original format


def test_golden_checkpoint_is_original_and_imports():
    raw = torch.load(GOLDEN / "tetrominoes.pth", weights_only=True, map_location="cpu")
    assert is_original_checkpoint(raw) and raw["step"] == 60
    model, geco = model_from_original(raw, golden_config("tetrominoes"))
    assert isinstance(model, EfficientMORL)
    assert set(geco) == {"C_ema", "beta"}
    assert torch.equal(model.state_dict()["refinenet.loc.weight"], raw["model"]["module.refinenet.loc.weight"])


def test_slot_attention_checkpoint_keeps_top_level_encoder_names():
    model, cfg, geco = load_for_inference(
        GOLDEN / "slot_attention_tetrominoes.pth", golden_config("slot_attention_tetrominoes")
    )
    assert isinstance(model, SlotAttention) and geco is None and not model.training


def test_legacy_names_are_mapped_like_the_original_eval():
    state = {
        "module.object_discovery_block.to_q.weight": torch.zeros(1),
        "module.object_discovery_block.gru.cell.zeros": torch.zeros(1),
        "module.object_discovery_block.gru.cell.zeros_n": torch.zeros(1),
        "module.object_discovery_block.generation_relation.0.weight": torch.zeros(1),
        "module.encoder_pt_1.0.weight": torch.zeros(1),
        "module.pos_embed_projection.bias": torch.zeros(1),
        "module.refinenet.loc.bias": torch.zeros(1),
        "module.geco_C_ema": torch.tensor(3.0),
        "module.geco_beta": torch.tensor(0.7),
    }
    converted, geco = convert_original_state(state, "emorl")
    assert sorted(converted) == [
        "hvae_networks.encoder_pt_1.0.weight",
        "hvae_networks.pos_embed_projection.bias",
        "hvae_networks.to_q.weight",
        "refinenet.loc.bias",
    ]
    assert float(geco["C_ema"]) == 3.0 and float(geco["beta"]) == pytest.approx(0.7)
    sa, none = convert_original_state({"module.encoder_pt_1.0.weight": torch.zeros(1)}, "slot_attention")
    assert list(sa) == ["encoder_pt_1.0.weight"] and none is None


def test_missing_and_extra_keys_are_listed():
    raw = torch.load(GOLDEN / "tetrominoes.pth", weights_only=True, map_location="cpu")
    raw["model"] = dict(raw["model"])
    raw["model"].pop("module.refinenet.loc.bias")
    raw["model"]["module.surprise.weight"] = torch.zeros(1)
    with pytest.raises(
        CheckpointError, match=r"missing keys \['refinenet.loc.bias'\].*unexpected keys \['surprise.weight'\]"
    ):
        model_from_original(raw, golden_config("tetrominoes"))


def test_wrong_config_is_reported_with_shapes():
    cfg = golden_config("tetrominoes").model_copy(update={"z_size": 16})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_for_inference(GOLDEN / "tetrominoes.pth", cfg)


def test_original_checkpoint_needs_a_config():
    with pytest.raises(CheckpointError, match="--config"):
        load_for_inference(GOLDEN / "tetrominoes.pth", None)
    with pytest.raises(CheckpointError, match="--config"):
        load_checkpoint(GOLDEN / "tetrominoes.pth")


# ---------------------------------------------------------------------------------------- our format


def test_round_trip_from_original_gives_same_weights_and_outputs(tmp_path):
    cfg = tetrominoes_config(golden_config("tetrominoes"))
    model, _, geco_state = load_for_inference(GOLDEN / "tetrominoes.pth", cfg)
    geco = GECO.from_config(cfg)
    geco.load_state_dict(geco_state)
    path = save_checkpoint(tmp_path / "ckpt.pt", model=model, config=cfg, geco=geco, step=60, rng=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)  # readable without unpickling arbitrary objects
    assert raw["format_version"] == 1 and raw["step"] == 60

    loaded, loaded_cfg, loaded_geco = load_for_inference(path)
    assert loaded_cfg == cfg
    assert torch.equal(loaded_geco["beta"], geco.beta)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    images = torch.from_numpy(np.load(GOLDEN / "tetrominoes.npz")["mc_images"][:2])
    with torch.no_grad():
        a = model(images, noise=fixed_noise(1))
        b = loaded(images, noise=fixed_noise(1))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.means, b.means)


def test_optimizer_and_rng_state_round_trip(tmp_path):
    model = build_model(ModelConfig(K=2, z_size=4, input_size=(3, 8, 8)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 8, 8) * 2 - 1, refinement_iters=1).loss.backward()
    optimizer.step()
    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    path = save_checkpoint(tmp_path / "a.pt", model=model, config=model.cfg, optimizer=optimizer, rng=True,
                           extra={"note": "x"})  # fmt: skip
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    ckpt = load_checkpoint(path)
    assert ckpt["extra"] == {"note": "x"}
    restore_rng_state(ckpt["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]
    fresh = torch.optim.Adam(build_model(model.cfg).parameters(), lr=1e-3)
    fresh.load_state_dict(ckpt["optimizer"])
    _, cfg, geco = load_for_inference(path)
    assert cfg == model.cfg and geco is None


def test_config_change_of_architecture_is_refused(tmp_path):
    cfg = tetrominoes_config(golden_config("tetrominoes"))
    model = build_model(cfg.model)
    path = save_checkpoint(tmp_path / "c.pt", model=model, config=cfg)
    other_i = cfg.model_copy(update={"model": cfg.model.model_copy(update={"refinement_iters": 1})})
    assert load_for_inference(path, other_i)[1].model.refinement_iters == 1
    other_k = cfg.model_copy(update={"model": cfg.model.model_copy(update={"K": 5})})
    with pytest.raises(CheckpointError, match="K=4"):
        load_for_inference(path, other_k)


def test_unreadable_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_for_inference(junk)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an emorl checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


# ---------------------------------------------------------------------------------------- hyperparameters


def test_model_config_from_golden_and_sacred_files():
    fields = model_config_from_original(json.loads((GOLDEN / "tetrominoes.json").read_text()))
    assert fields == {
        "kind": "emorl", "K": 4, "z_size": 32, "input_size": [3, 35, 35], "stochastic_layers": 3,
        "refinement_iters": 3, "log_scale": -1.2039728, "image_likelihood": "gaussian", "image_decoder": "small",
        "use_dual_gru": True, "bottom_up_prior": False, "reverse_prior_plusplus": True,
    }  # fmt: skip
    sa = model_config_from_original(json.loads((GOLDEN / "slot_attention_tetrominoes.json").read_text()))
    assert sa["kind"] == "slot_attention" and sa["image_decoder"] == "small"
    for path in sorted((DATA / "original_configs").glob("*.json")):
        fields = model_config_from_original(json.loads(path.read_text()))
        ModelConfig(**fields)  # valid
        assert fields["kind"] == ("slot_attention" if "SlotAttention" in path.name else "emorl")


def test_model_config_from_net_block_defaults_and_errors():
    fields = model_config_from_original({"K": 7, "image_likelihood": "GMM"})
    assert fields["K"] == 7 and fields["image_likelihood"] == "gmm" and fields["z_size"] == 64
    assert fields["image_decoder"] == "iodine" and fields["input_size"] == [3, 64, 64]
    with pytest.raises(ConfigError, match="unknown"):
        model_config_from_original({"K": 4, "bogus": 1})
    with pytest.raises(ConfigError, match="IODINE"):
        model_config_from_original({"K": 4}, model="IODINE")


def test_a_stop_signal_in_the_middle_of_a_checkpoint_write_is_raised_as_itself(tmp_path, monkeypatch):
    """SIGTERM while torch.save writes: the caller sees the `Stopped` (and says the one stop line), not torch's
    zip-writer RuntimeError ("unexpected pos …") that replaced it; no file or temporary file is left."""
    import io
    import signal

    import emorl_cli.checkpoint as checkpoint
    from emorl_cli.cli.stopping import Stopped

    stop = Stopped(signal.SIGTERM)

    class Interrupted(io.FileIO):
        written = 0

        def write(self, data):
            Interrupted.written += len(data)
            if Interrupted.written > 4096:
                raise stop
            return super().write(data)

    monkeypatch.setattr(checkpoint, "open", lambda path, mode: Interrupted(path, mode.replace("b", "")), raising=False)
    model = build_model(ModelConfig(K=2, z_size=4, input_size=(3, 8, 8), image_decoder="small"))
    with pytest.raises(Stopped) as raised:
        save_checkpoint(tmp_path / "step.pt", model=model, config=model.cfg)
    assert raised.value is stop
    assert list(tmp_path.iterdir()) == []
