"""The models: EfficientMORL and the Slot Attention baseline.

    from emorl_cli.model import build_model, Objective
    model = build_model(cfg.model)
    out = model(images, Objective.elbo())            # training: out.loss.backward()
    with torch.no_grad():                            # inference: refinement still gets its gradients
        out = model(images, Objective.elbo(), refinement_iters=3)

Symbols: B images, K slots, D latent size, L bottom-up stochastic layers, I refinement steps.
"""

from __future__ import annotations

from torch import nn

from emorl_cli.config import ModelConfig
from emorl_cli.model.distributions import NoiseFn
from emorl_cli.model.emorl import EfficientMORL
from emorl_cli.model.objective import Objective
from emorl_cli.model.output import ModelOutput, StageRecord
from emorl_cli.model.slot_attention import SlotAttention

__all__ = [
    "EfficientMORL",
    "ModelOutput",
    "NoiseFn",
    "Objective",
    "SlotAttention",
    "StageRecord",
    "build_model",
]


def build_model(model_cfg: ModelConfig) -> nn.Module:
    """EfficientMORL or SlotAttention, freshly initialised as the original does, on the CPU."""
    if model_cfg.kind == "emorl":
        return EfficientMORL(model_cfg)
    if model_cfg.kind == "slot_attention":
        return SlotAttention(model_cfg)
    raise ValueError(f"unknown model kind {model_cfg.kind!r}; expected 'emorl' or 'slot_attention'")
