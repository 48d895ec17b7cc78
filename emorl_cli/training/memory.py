"""The memory a training step needs, estimated from the config before anything is allocated.

A step keeps for its backward pass the hidden activations of every slot's decoder (B·K decodes of an
H×W image) and per-pixel features of the encoder, the attention and the likelihood (B images):

    bytes ≈ b · (B·K·A_dec + B·H·W·PIXEL_FEATURES) + 16 · parameters

with b = 4 (float32) or 2 (bf16/fp16 autocast) and A_dec the decoder's hidden activations per slot
(`model.decoder_width` channels × layers × grid area). Measured on a CPU (peak RSS of one step, a quiet
machine) for the shipped configs and variants of K, L, I, B and precision, a step used 1.3–2.5 times this,
so it is a lower bound: a config whose estimate exceeds the free memory cannot train, and is refused before it
allocates anything. Inference (eval, viz, gifs, segment) keeps about the same activations per image, in
float32, and is refused the same way for a --batch-size that cannot fit (`check_inference_memory`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

import torch

from emorl_cli.config import Config
from emorl_cli.data.batches import available_memory_bytes
from emorl_cli.errors import TrainingError
from emorl_cli.model.decoder import hidden_channels

if TYPE_CHECKING:
    from emorl_cli.evaluate.session import LoadedModel

# Activations per pixel of each image outside the decoder (encoder, attention, likelihood), fitted low.
PIXEL_FEATURES = 700
# The share of a training step's activations an inference batch is estimated to hold, fitted low (measured
# 0.92–1.16, see `inference_batch_bytes`).
INFERENCE_SHARE = 0.75
# Set to 1 to train even when the estimate exceeds the free memory.
SKIP_ENV = "EMORL_SKIP_MEMORY_CHECK"


def decoder_activations(kind: str, height: int, width: int, channels: Optional[int] = None) -> int:
    """Hidden activations one slot's decode produces (channels × layers × grid area, approximately).

    `channels`: `model.decoder_width` (None: the kind's own)."""
    c = hidden_channels(kind, channels)
    if kind == "small":  # 3 layers on a grid shrinking from (H+4)² to H²
        return c * 3 * (height + 2) * (width + 2)
    if kind == "iodine":  # 4 layers on a grid shrinking from (H+8)² to (H+2)²
        return c * 4 * (height + 5) * (width + 5)
    if kind == "upsample":  # one layer at H×W, two at (H/2)², two at (H/4)²; twice the channels allowed for
        return 2 * c * 13 * height * width // 8
    # big: transposed convolutions from H/16 up: two layers at H×W, the smaller ones add about a third
    return c * 7 * height * width // 3


def _activations_per_image(cfg: Config) -> int:
    """Values one image's pass keeps: K decodes of the decoder's hidden layers and the per-pixel features."""
    _, h, w = cfg.model.input_size
    decoder = decoder_activations(cfg.model.image_decoder, h, w, cfg.model.decoder_width)
    return cfg.model.K * decoder + PIXEL_FEATURES * h * w


def _parameter_count(cfg: Config) -> int:
    from emorl_cli.model import build_model

    with torch.device("meta"):  # counts the parameters without allocating them
        return sum(p.numel() for p in build_model(cfg.model).parameters())


def training_step_bytes(cfg: Config, batch: int) -> int:
    """Estimated bytes of one training step of `cfg` at `batch` images per process (see the module)."""
    per_value = 2 if cfg.training.mixed_precision in ("bf16", "fp16") else 4
    return per_value * batch * _activations_per_image(cfg) + 16 * _parameter_count(cfg)


def inference_batch_bytes(cfg: Config, batch: int) -> int:
    """Estimated bytes of inferring one batch of `batch` images (eval, viz, gifs, segment): a share
    `INFERENCE_SHARE` of a training step's activations, in float32 (inference does not autocast), and the
    weights alone.

    A refinement step keeps the graph of its decode for the gradient with respect to λ, and at I = 0 a decode's
    activations are still alive at once, so a batch holds about what one training stage holds. Measured per
    image against the unscaled activations: 1.0× (`emorl eval ari`, I = 0) and 1.16× (I = 2) on
    demo_multi_dsprites at decoder width 16, 0.92× (segmenting, I = 2) on the demo's 35×35 model.
    """
    return int(4 * INFERENCE_SHARE * batch * _activations_per_image(cfg)) + 4 * _parameter_count(cfg)


def free_memory_bytes(device: torch.device) -> Optional[int]:
    """Free memory of `device` now (a GPU's free memory, or the machine's available memory), or None."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:
            return None
    return available_memory_bytes()


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def refuse_beyond_free(needed: int, device: torch.device, doing: str, sizes: str, lower: str) -> int:
    """Refuse work whose memory estimate `needed` exceeds what `device` has free; returns the estimate.

    Args:
        doing: the work, e.g. 'training'.
        sizes: what sets its size, e.g. 'batch 32 per process, K=4, 35x35 images'.
        lower: the options that shrink it, e.g. 'training.batch_size or model.K'.

    Raises:
        TrainingError: the estimate exceeds the free memory (the message gives both and what to lower).
    """
    free = free_memory_bytes(device)
    if free is None or needed <= free or os.environ.get(SKIP_ENV, "") not in ("", "0"):
        return needed
    where = "this GPU has" if device.type == "cuda" else "this machine has"
    raise TrainingError(
        f"{doing} needs at least about {_gb(needed)} of memory ({sizes}), but {where} {_gb(free)} free; lower {lower}, "
        f"or use a machine with more memory ({SKIP_ENV}=1 tries anyway)"
    )


def check_training_memory(cfg: Config, device: torch.device, batch: int) -> int:
    """Refuse a config whose training step needs more memory than `device` has free; returns the estimate.

    Raises:
        TrainingError: the estimate exceeds the free memory (the message gives both and what to lower).
    """
    _, h, w = cfg.model.input_size
    sizes = f"batch {batch} per process, K={cfg.model.K}, {h}x{w} images, {cfg.model.image_decoder} decoder"
    lower = "training.batch_size or model.K"
    return refuse_beyond_free(training_step_bytes(cfg, batch), device, "training", sizes, lower)


def check_inference_memory(cfg: Config, batch: int, device: torch.device, lower: str = "--batch-size") -> int:
    """Refuse an inference batch whose memory estimate exceeds what `device` has free; returns the estimate.

    `lower`: the option that shrinks the batch, as the caller's user knows it.

    Raises:
        TrainingError: the estimate exceeds the free memory (the message gives both and what to lower).
    """
    _, h, w = cfg.model.input_size
    sizes = f"batch {batch}, K={cfg.model.K}, {h}x{w} images, {cfg.model.image_decoder} decoder"
    return refuse_beyond_free(inference_batch_bytes(cfg, batch), device, "inference", sizes, lower)


def fit_inference_batch(loaded: LoadedModel, wanted: int, count: int, lower: str = "--batch-size") -> int:
    """The batch that inferring `count` images `wanted` at a time runs with (at most `count`, at least 1),
    after `check_inference_memory` on the model's device: what eval, viz, gifs and segment call."""
    from emorl_cli.evaluate.runner import model_device

    batch = max(1, min(wanted, count))
    check_inference_memory(loaded.cfg, batch, model_device(loaded.model), lower)
    return batch
