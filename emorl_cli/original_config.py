"""Import of the original EfficientMORL sacred JSON configs (`configs/train/*/*.json`, `configs/test/*/*/*.json`).

The original keeps hyperparameters in four blocks: `Net` (the model), `dataset`, `training` or `test`,
and `seed`. A JSON file carries only some fields; the rest come from the shipped emorl config of the same
dataset and model, so a converted file is a complete, validated emorl config.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from emorl_cli.config import Config, config_from_dict, config_to_dict, load_config
from emorl_cli.errors import ConfigError
from emorl_cli.json_input import read_json

# (file name prefix, clevr preprocess style) → our dataset name. Checked in order.
_DATASET_PREFIXES = (
    ("tetrominoes", "tetrominoes"),
    ("multi_dsprites", "multi_dsprites"),
    ("clevr", "clevr6"),
)
_MODEL_KINDS = {"EfficientMORL": "emorl", "SlotAttention": "slot_attention"}
_LIKELIHOODS = {"gaussian": "gaussian", "gmm": "gmm"}
# A GECO target whose magnitude exceeds this is a whole-image total (the older configs), not per pixel-channel.
_TOTAL_TARGET_THRESHOLD = 50.0
# Net keys → model fields that copy over unchanged.
_NET_FIELDS = {
    "K": "K",
    "z_size": "z_size",
    "input_size": "input_size",
    "stochastic_layers": "stochastic_layers",
    "refinement_iters": "refinement_iters",
    "log_scale": "log_scale",
    "image_decoder": "image_decoder",
    "use_DualGRU": "use_dual_gru",
    "bottom_up_prior": "bottom_up_prior",
    "reverse_prior_plusplus": "reverse_prior_plusplus",
}


def _dataset_name(h5_path: str, style: str) -> str:
    name = Path(h5_path).name
    for prefix, dataset in _DATASET_PREFIXES:
        if name.startswith(prefix):
            if dataset == "clevr6" and style == "clevr-large":
                return "clevr6_128"
            return dataset
    raise ConfigError(
        f"dataset.h5_path {h5_path!r} names no known dataset; expected a file starting with "
        f"{', '.join(p for p, _ in _DATASET_PREFIXES)}"
    )


def per_pixel_target(target: float, input_size: list[int]) -> float:
    """GECO target per pixel and channel; older configs give the whole-image total (e.g. −4500 for 3x35x35)."""
    if abs(target) > _TOTAL_TARGET_THRESHOLD:
        c, h, w = input_size
        return round(target / (c * h * w), 7)
    return float(target)


def model_fields_from_net(net: dict[str, Any]) -> dict[str, Any]:
    """The original `Net` block (or a golden `NAME.json` "config") → our `model` section fields."""
    fields: dict[str, Any] = {}
    for key, ours in _NET_FIELDS.items():
        if key in net:
            fields[ours] = list(net[key]) if key == "input_size" else net[key]
    if "image_likelihood" in net:
        value = str(net["image_likelihood"]).lower()
        if value not in _LIKELIHOODS:
            raise ConfigError(f"Net.image_likelihood {net['image_likelihood']!r} is unknown; expected Gaussian or GMM")
        fields["image_likelihood"] = _LIKELIHOODS[value]
    return fields


def _geco_fields(block: dict[str, Any], input_size: list[int]) -> dict[str, Any]:
    geco: dict[str, Any] = {}
    if "use_geco" in block:
        geco["enabled"] = bool(block["use_geco"])
    if "geco_reconstruction_target" in block:
        geco["target"] = per_pixel_target(float(block["geco_reconstruction_target"]), input_size)
    if "geco_ema_alpha" in block:
        geco["ema_alpha"] = block["geco_ema_alpha"]
    if "geco_beta_stepsize" in block:
        geco["beta_step_size"] = block["geco_beta_stepsize"]
    if "geco_step_size_acceleration" in block:
        geco["step_size_acceleration"] = float(block["geco_step_size_acceleration"])
    return geco


def _training_fields(block: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    copies = {
        "batch_size": "batch_size",
        "iters": "iters",
        "lr": "lr",
        "warmup": "warmup",
        "decay_rate": "lr_decay_rate",
        "decay_steps": "lr_decay_steps",
        "kl_beta_init": "kl_beta",
        "checkpoint_freq": "checkpoint_every",
        "tensorboard_freq": "log_every",
    }
    for key, ours in copies.items():
        if key in block:
            out[ours] = block[key]
    if "refinement_curriculum" in block:
        out["refinement_curriculum"] = [list(entry) for entry in block["refinement_curriculum"]]
    if "clip_grad_norm" in block:
        out["clip_grad_norm"] = 5.0 if block["clip_grad_norm"] else None
    if block.get("use_scheduler") is False:
        out["warmup"] = 0
        out["lr_decay_rate"] = 1.0
    return out


def _typed(value: Any, kind: type, where: str, expected: str) -> Any:
    """`value` when it is a `kind` (JSON true/false never counts as a number or a string); else a one-line
    `ConfigError` naming the field, the value seen and what belongs there."""
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise ConfigError(
        f"{where} is {type(value).__name__} {shown}, expected {expected}; fix the original config "
        "(nothing was converted)"
    )


def convert_original(raw: dict[str, Any]) -> Config:
    """Turn one original sacred JSON (train or test) into a validated emorl `Config`.

    Raises:
        ConfigError: a block or field of the wrong kind (a list where the `Net` block belongs, a number where
            a path belongs), or values the emorl config refuses — one line; nothing is filled in silently.
    """
    if "Net" not in raw or "dataset" not in raw or not ({"training", "test"} & raw.keys()):
        raise ConfigError(
            f"not an original EfficientMORL config: expected keys Net, dataset and training or test, got {sorted(raw)}"
        )
    is_train = "training" in raw
    block_name = "training" if is_train else "test"
    net = _typed(raw["Net"], dict, "block 'Net'", "a JSON object of model fields")
    dataset = _typed(raw["dataset"], dict, "block 'dataset'", "a JSON object")
    block = _typed(raw[block_name], dict, f"block {block_name!r}", "a JSON object")
    try:
        return _convert(raw, net, dataset, block, is_train)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, IndexError) as exc:
        raise ConfigError(
            "the original config holds a value of the wrong kind "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); fix it (nothing was converted)"
        ) from None


def _convert(
    raw: dict[str, Any], net: dict[str, Any], dataset: dict[str, Any], block: dict[str, Any], is_train: bool
) -> Config:
    model = _typed(block.get("model", "EfficientMORL"), str, "field 'model'", "a model name such as EfficientMORL")
    kind = _MODEL_KINDS.get(model)
    if kind is None:
        raise ConfigError(f"model {block.get('model')!r} is unknown; expected one of {sorted(_MODEL_KINDS)}")
    h5_path = _typed(dataset.get("h5_path", ""), str, "dataset.h5_path", "the path of an .h5 file")
    style = _typed(dataset.get("clevr_preprocess_style", ""), str, "dataset.clevr_preprocess_style", "a string")
    if "input_size" in net:
        _typed(net["input_size"], list, "Net.input_size", "a list [C, H, W]")
    dataset_name = _dataset_name(h5_path, style)
    base_name = dataset_name if kind == "emorl" else f"slot_attention_{dataset_name}"
    try:
        base = config_to_dict(load_config(base_name))
    except ConfigError:
        raise ConfigError(f"no shipped config {base_name!r} to complete {h5_path!r} from") from None
    cfg = copy.deepcopy(base)

    cfg["model"].update(model_fields_from_net(net))
    cfg["model"]["kind"] = kind
    input_size = cfg["model"]["input_size"]
    cfg["data"]["image_size"] = input_size[1]
    cfg["data"]["train_file" if is_train else "test_file"] = Path(h5_path).name
    if "masks" in dataset and not is_train:
        cfg["data"]["load_masks"] = bool(dataset["masks"])
    if "factors" in dataset:
        cfg["data"]["load_factors"] = bool(dataset["factors"])
    if "geco_warm_start" in net:
        cfg["geco"]["warm_start"] = int(net["geco_warm_start"])
    cfg["geco"].update(_geco_fields(block, input_size))
    if "seed" in raw:
        cfg["training"]["seed"] = raw["seed"]
    if is_train:
        cfg["training"].update(_training_fields(block))
    else:
        if "num_images_to_process" in block:
            cfg["eval"]["num_images"] = block["num_images_to_process"]
        if "refinement_iters" in net:
            cfg["eval"]["refinement_iters"] = net["refinement_iters"]
    return config_from_dict(cfg, source="converted config")


def convert_original_file(path: Path) -> Config:
    """Read an original JSON file and convert it (see `convert_original`)."""
    advice = "give the path of an original EfficientMORL JSON config"
    raw = read_json(path, error=ConfigError, advice=advice, expect=dict)
    return convert_original(raw)
