"""Checkpoints: emorl's own format, and import of the original EfficientMORL `.pth` files.

Our format — one `torch.save`d dict, readable with `torch.load(weights_only=True)` (only tensors, numbers,
strings, lists and dicts):

    format          "emorl-checkpoint"
    format_version  1
    model           the model's state_dict (keys as in the original, without "module.")
    config          the resolved run config (`config_to_dict`), or {"model": {...}} when only that is known
    geco            {"C_ema", "beta"} or None
    step            int
    optimizer       optimizer state_dict or None
    rng             {"torch", "cuda", "numpy", "python"} (see `capture_rng_state`) or None
    extra           dict of anything else (e.g. accelerate / scheduler state), {} by default

The original format — `{"step", "model", "model_opt", "kl_beta"}`, written by its train.py under DDP:
model keys start with "module." and include "module.geco_C_ema" / "module.geco_beta". Importing strips
the prefix, applies the renames the original's own eval.py applies to older checkpoints
(`object_discovery_block` → `hvae_networks`; top-level `encoder_pt*` / `pos_embed_projection` → under
`hvae_networks`; drops `generation_relation*` and `gru.cell.zeros*`), and moves the GECO values into the
GECO state. The original's JSON files hold no full run config, so a config must be given with it.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from emorl_cli.config import Config, ModelConfig, config_from_dict, config_to_dict
from emorl_cli.errors import CheckpointError, ConfigError
from emorl_cli.files import atomic_path

FORMAT = "emorl-checkpoint"
FORMAT_VERSION = 1
ORIGINAL_KEYS = {"step", "model", "model_opt", "kl_beta"}
_OUR_PARTS = ("model", "config", "geco", "step", "optimizer", "rng", "extra")

# The original `Net` defaults (lib/model.py), used for fields an original JSON leaves out.
ORIGINAL_NET_DEFAULTS: dict[str, Any] = {
    "input_size": [3, 64, 64],
    "z_size": 64,
    "K": 4,
    "stochastic_layers": 3,
    "refinement_iters": 3,
    "log_scale": -2.302585092994046,  # log(0.1)
    "image_decoder": "iodine",
    "image_likelihood": "Gaussian",
    "use_DualGRU": True,
    "bottom_up_prior": False,
    "reverse_prior_plusplus": True,
}
_MODEL_KINDS = {"EfficientMORL": "emorl", "SlotAttention": "slot_attention", "emorl": "emorl",
                "slot_attention": "slot_attention"}  # fmt: skip
# Net keys that are not model fields (GECO warm start belongs to the geco section).
_NON_MODEL_NET_KEYS = {"geco_warm_start", "batch_size"}


# ================================================================================ original hyperparameters


def model_config_from_original(net: dict[str, Any], model: Optional[str] = None) -> dict[str, Any]:
    """Original hyperparameters → the fields of our `ModelConfig` (a plain dict; validate with ModelConfig).

    `net` is the `Net` block of an original sacred config, a golden `NAME.json` "config" block, or either
    whole file (the block and the model name are then taken from it). Missing fields take the original's
    defaults. `model` is 'EfficientMORL' or 'SlotAttention' (default: from the file, else EfficientMORL).
    """
    from emorl_cli.original_config import model_fields_from_net  # the shared Net → model field table

    if "Net" in net or "config" in net:  # a whole file
        block = next((net[k] for k in ("training", "test") if isinstance(net.get(k), dict)), {})
        model = model or net.get("model") or block.get("model")
        net = net.get("Net", net.get("config")) or {}
    model = model or "EfficientMORL"
    if model not in _MODEL_KINDS:
        raise ConfigError(f"model {model!r} is unknown; expected EfficientMORL or SlotAttention")
    known = set(ORIGINAL_NET_DEFAULTS) | _NON_MODEL_NET_KEYS
    unknown = sorted(set(net) - known)
    if unknown:
        raise ConfigError(f"original Net keys {unknown} are unknown; expected some of {sorted(known)}")
    fields = model_fields_from_net({**ORIGINAL_NET_DEFAULTS, **net})
    fields["kind"] = _MODEL_KINDS[model]
    return fields


# ================================================================================ original checkpoints


def is_original_checkpoint(obj: Any) -> bool:
    """True for a dict in the original train.py layout ({"step", "model", "model_opt", "kl_beta"})."""
    return isinstance(obj, dict) and ORIGINAL_KEYS <= set(obj) and "format" not in obj


def _torch_load(path: Union[str, Path]) -> Any:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a folder, not a checkpoint file; give a file such as "
            f"{path / 'checkpoints' / 'best.pt'} (a run keeps its checkpoints in RUN/checkpoints/)"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check the path")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path} is empty (0 bytes): writing it was cut off (a crash, a full disk, or a copy still under way); "
            "use another checkpoint"
        )
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # unpickling errors, truncated files, non-torch files
        raise CheckpointError(_load_failure(path, exc)) from None


# torch's advice to load a refused file unsafely, which emorl never repeats (phrases of its messages)
_UNSAFE_ADVICE = ("weights_only", "safe_globals", "trusted source", "trust this", "arbitrary code", "Re-running")
_GLOBAL = re.compile(r"GLOBAL\s+([A-Za-z_][\w.]*)")


def _without_unsafe_advice(text: str) -> str:
    """`text` less every sentence that tells the reader how to load the file without the safe loader."""
    sentences = re.split(r"(?<=[.;])\s+|\(\d\)\s*", " ".join(text.split()))
    kept = [s for s in sentences if s and not any(phrase in s for phrase in _UNSAFE_ADVICE)]
    return " ".join(kept).strip()


def _load_failure(path: Path, exc: Exception) -> str:
    """One line on why torch.load(weights_only=True) refused a file, keeping the sense of torch's message and
    none of its advice to load the file unsafely."""
    text = str(exc)
    if text.startswith("Weights only load failed"):
        # torch's message says weights_only=False (or add_safe_globals) would load it; emorl never loads
        # untrusted pickles, so only the reason is kept, and the risk stated.
        found = _GLOBAL.search(text)
        if found:
            return (
                f"{path} holds Python objects besides tensors (GLOBAL {found.group(1)}); unpickling them could "
                "run arbitrary code, so emorl does not load this file — use a checkpoint written by emorl or by "
                "the original EfficientMORL code, from a source you trust"
            )
        lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
        lines = [line for line in lines if not line.startswith(("Check the documentation", "Please file an issue"))]
        reason = _without_unsafe_advice(" ".join(lines).replace("WeightsUnpickler error:", ""))
        reason = reason or "unsupported content"
        return f"{path} cannot be read as a checkpoint (torch's safe loader: {reason}); it may be damaged or not one"
    first = _without_unsafe_advice(text).split(". ")[0][:200] or type(exc).__name__
    return (
        f"{path} cannot be read as a checkpoint ({type(exc).__name__}: {first}); it may be truncated or damaged, "
        "still being written, or not a checkpoint"
    )


def convert_original_state(
    state: dict[str, torch.Tensor], kind: str = "emorl"
) -> tuple[dict[str, torch.Tensor], Optional[dict[str, torch.Tensor]]]:
    """An original model state dict → (our model state dict, GECO state or None)."""
    converted: dict[str, torch.Tensor] = {}
    geco: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if "generation_relation" in name or "gru.cell.zeros" in name:
            continue  # parts of older models that no longer exist
        if name in ("geco_C_ema", "geco_beta"):
            geco[name[len("geco_") :]] = value
            continue
        if kind == "emorl":
            if name.startswith("object_discovery_block."):
                name = "hvae_networks." + name[len("object_discovery_block.") :]
            elif name.startswith(("encoder_pt", "pos_embed_projection.")):
                name = "hvae_networks." + name
        converted[name] = value
    return converted, (geco if geco else None)


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that reports every missing/unexpected key and shape mismatch as a CheckpointError."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if extra:
            parts.append(f"unexpected keys {extra}")
        if shapes:
            parts.append(f"shape mismatches {shapes}")
        raise CheckpointError(
            f"{source} does not match the configured model ({'; '.join(parts)}); "
            "check that the config (model kind, K, z_size, input_size, decoder, use_dual_gru) is the one "
            "it was trained with"
        )
    model.load_state_dict(state)


def model_from_original(
    checkpoint: dict[str, Any], model_cfg: ModelConfig, source: str = "original checkpoint"
) -> tuple[nn.Module, Optional[dict[str, torch.Tensor]]]:
    """Build the configured model and load an original checkpoint dict into it → (model, GECO state)."""
    from emorl_cli.model import build_model

    state, geco = convert_original_state(checkpoint["model"], model_cfg.kind)
    model = build_model(model_cfg)
    load_state_strict(model, state, source)
    if geco is not None and set(geco) != {"C_ema", "beta"}:
        raise CheckpointError(f"{source} has only {sorted(geco)} of geco_C_ema/geco_beta; the file is damaged")
    return model, geco


# ================================================================================ RNG state


def capture_rng_state() -> dict[str, Any]:
    """torch (+ CUDA), numpy and python RNG states as tensors, lists and numbers (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": [int(v) for v in internal], "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (CUDA states are restored when there are as many devices)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# ================================================================================ our format


def _config_dict(config: Union[Config, ModelConfig, dict, None]) -> dict[str, Any]:
    if isinstance(config, Config):
        return config_to_dict(config)
    if isinstance(config, ModelConfig):
        return {"model": config.model_dump(mode="json")}
    if isinstance(config, dict):
        return config
    raise CheckpointError(f"save_checkpoint needs config= a Config, ModelConfig or dict, got {type(config).__name__}")


def save_checkpoint(
    path: Union[str, Path],
    *,
    model: Union[nn.Module, dict[str, torch.Tensor]],
    config: Union[Config, ModelConfig, dict],
    geco: Any = None,
    step: int = 0,
    optimizer: Any = None,
    rng: Union[bool, dict[str, Any], None] = None,
    extra: Optional[dict[str, Any]] = None,
) -> Path:
    """Write a checkpoint in our format atomically (temp file beside `path`, then os.replace).

    model: module or state dict; config: the resolved `Config` (or `ModelConfig`/dict); geco: a GECO, its
    state dict or None; optimizer: an optimizer or its state dict; rng: True to capture the RNG state now,
    or a `capture_rng_state()` dict; extra: any further weights_only-safe dict.
    """
    if isinstance(model, nn.Module):
        model = model.state_dict()
    if geco is not None and hasattr(geco, "state_dict"):
        geco = geco.state_dict()
    if optimizer is not None and hasattr(optimizer, "state_dict"):
        optimizer = optimizer.state_dict()
    if rng is True:
        rng = capture_rng_state()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model.items()},
        "config": _config_dict(config),
        "geco": geco,
        "step": int(step),
        "optimizer": optimizer,
        "rng": rng or None,
        "extra": extra or {},
    }
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        try:
            torch.save(payload, handle)  # through a Python file, so a full disk raises its own OSError
        except RuntimeError as exc:
            # torch's zip writer, closing after a failed write, replaces the failure with its own RuntimeError:
            # raise the failure itself — a full disk, or a stop signal (Ctrl-C, SIGTERM) that arrived mid-write
            if isinstance(exc.__context__, (OSError, KeyboardInterrupt)):
                raise exc.__context__ from None
            raise
    return path


def load_checkpoint(path: Union[str, Path]) -> dict[str, Any]:
    """Read a checkpoint in our format → its dict (see the module docstring), on the CPU."""
    obj = _torch_load(path)
    if is_original_checkpoint(obj):
        raise CheckpointError(
            f"{path} is an original EfficientMORL checkpoint, not an emorl one; load it with "
            "load_for_inference(path, config) (on the command line: pass --config)"
        )
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an emorl checkpoint (no format={FORMAT!r} entry)")
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this emorl reads up to {FORMAT_VERSION}; upgrade emorl"
        )
    missing = [k for k in _OUR_PARTS if k not in obj]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; the file is damaged")
    return obj


def _stored_config(ckpt: dict[str, Any], path: Union[str, Path]) -> Union[Config, ModelConfig]:
    raw = ckpt["config"]
    if set(raw) >= {"data", "model", "training"}:
        try:
            return config_from_dict(raw, source=f"config stored in {path}")
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
    try:
        return ModelConfig.model_validate(raw["model"])
    except Exception as exc:
        raise CheckpointError(f"the model config stored in {path} is invalid ({exc}); the file is damaged") from None


def _architecture(cfg: ModelConfig) -> dict[str, Any]:
    """Fields that change the weights (everything but the test-time I)."""
    return cfg.model_dump(mode="json", exclude={"refinement_iters"})


def load_for_inference(
    path: Union[str, Path], config: Union[Config, ModelConfig, None] = None
) -> tuple[nn.Module, Union[Config, ModelConfig], Optional[dict[str, torch.Tensor]]]:
    """Either format → (model in eval mode on the CPU, config, GECO state {"C_ema", "beta"} or None).

    Our format carries its config; a given `config` is used instead when its model section has the same
    architecture (it may change only model.refinement_iters), else it is an error. The original format
    needs `config`.
    """
    from emorl_cli.model import build_model

    obj = _torch_load(path)
    if is_original_checkpoint(obj):
        if config is None:
            raise CheckpointError(
                f"{path} is an original EfficientMORL checkpoint, which holds no model settings; "
                "pass the config it was trained with (--config NAME_OR_YAML)"
            )
        model_cfg = config.model if isinstance(config, Config) else config
        model, geco = model_from_original(obj, model_cfg, source=str(path))
        return model.eval(), config, geco
    ckpt = load_checkpoint(path)
    stored = _stored_config(ckpt, path)
    stored_model = stored.model if isinstance(stored, Config) else stored
    chosen: Union[Config, ModelConfig] = stored
    if config is not None:
        given_model = config.model if isinstance(config, Config) else config
        if _architecture(given_model) != _architecture(stored_model):
            trained, given = _architecture(stored_model), _architecture(given_model)
            diff = ", ".join(f"{k}={trained.get(k)!r} (given {v!r})" for k, v in given.items() if trained.get(k) != v)
            raise CheckpointError(
                f"{path} was trained with a different model: {diff}; omit --config or use the run's own config"
            )
        chosen = config
    chosen_model = chosen.model if isinstance(chosen, Config) else chosen
    model = build_model(chosen_model)
    load_state_strict(model, ckpt["model"], str(path))
    return model.eval(), chosen, ckpt["geco"]
