"""The Slot Attention baseline (Locatello et al. 2020) as the EfficientMORL code trains it.

Same encoder and spatial-broadcast decoder as EfficientMORL; slots start as one sample of a learned
Gaussian N(μ₀, σ(s₀)) and are refined by 3 attention iterations (GRU + residual MLP). The loss is the
squared error of the mask-weighted reconstruction, summed over pixels and channels, averaged over images.
Parameter names are the original's.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from emorl_cli.config import ModelConfig
from emorl_cli.model.attention import attend
from emorl_cli.model.decoder import SpatialBroadcastDecoder
from emorl_cli.model.distributions import DiagonalGaussian, NoiseFn
from emorl_cli.model.emorl import check_images, detach_output
from emorl_cli.model.encoder import conv_stack, encode_image, token_mlp
from emorl_cli.model.objective import Objective
from emorl_cli.model.output import ModelOutput, StageRecord
from emorl_cli.model.weight_init import xavier_init

ATTENTION_ITERS = 3
MLP_HIDDEN = 128


class SlotAttention(nn.Module):
    """Slot Attention autoencoder for a `ModelConfig` (kind 'slot_attention')."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        c, h, w = cfg.input_size
        d = cfg.z_size
        self.K, self.z_size, self.scale = cfg.K, d, d**-0.5 / cfg.attention_temperature  # 1/(T·√D)
        width = cfg.encoder_width
        self.pos_embed_projection = nn.Linear(4, width)
        self.encoder_pt_1 = conv_stack(c, width)
        self.encoder_pt_2 = token_mlp(width)
        self.norm_slots = nn.LayerNorm(d)
        self.norm_pre_ff = nn.LayerNorm(d)
        self.to_q = nn.Linear(d, d, bias=False)
        self.to_k = nn.Linear(width, d, bias=False)
        self.to_v = nn.Linear(width, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, MLP_HIDDEN), nn.ReLU(), nn.Linear(MLP_HIDDEN, d))
        self.gru = nn.GRU(d, d)
        self.init_slots = nn.Parameter(torch.cat([torch.zeros(1, d), torch.ones(1, d)], dim=1))  # [1, 2D]
        self.image_decoder = SpatialBroadcastDecoder(
            cfg.image_decoder, d, h, w, cfg.decoder_width, cfg.decoder_position_frequencies
        )
        xavier_init(self.image_decoder, gain=cfg.init_gain)  # the original initialises only the decoder this way

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [N, D] → (rgb [N, 3, H, W] in [0, 1], mask_logits [N, H, W])."""
        return self.image_decoder(z)

    def _decode_slots(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """slots [B, K, D] → means [B, K, C, H, W], mask log-probabilities [B, K, 1, H, W]."""
        b = slots.shape[0]
        c, h, w = self.cfg.input_size
        rgb, logits = self.decode(slots.reshape(b * self.K, self.z_size))
        return rgb.view(b, self.K, c, h, w), torch.log_softmax(logits.view(b, self.K, 1, h, w), dim=1)

    def forward(
        self,
        images: torch.Tensor,
        objective: Optional[Objective] = None,
        *,
        refinement_iters: Optional[int] = None,
        record: bool = False,
        noise: Optional[NoiseFn] = None,
    ) -> ModelOutput:
        """images [B, 3, H, W] in [-1, 1] → ModelOutput (nll, kl None; posterior_loc = slots).

        `objective` and `refinement_iters` are accepted for a uniform call signature and ignored.
        """
        check_images(images, self.cfg.input_size)
        b, k, d = images.shape[0], self.K, self.z_size
        _, h, w = self.cfg.input_size
        tokens = encode_image(images, self.encoder_pt_1, self.pos_embed_projection, self.encoder_pt_2)
        keys, values = self.to_k(tokens), self.to_v(tokens)  # [B, H*W, D] each

        init = DiagonalGaussian.from_params(self.init_slots.repeat(b * k, 1))  # over [B*K, D]
        slots = init.rsample(noise).view(b, k, d)  # [B, K, D]
        trace: Optional[list[StageRecord]] = [] if record else None
        for it in range(ATTENTION_ITERS):
            previous = slots
            q = self.to_q(self.norm_slots(previous)) * self.scale  # [B, K, D]
            updates, attn = attend(q, keys, values)  # [B, K, D], [B, K, H*W]
            out, _ = self.gru(updates.reshape(1, b * k, d), previous.reshape(1, b * k, d))  # [1, B*K, D]
            slots = out.reshape(b, k, d)
            slots = slots + self.mlp(self.norm_pre_ff(slots))
            if trace is not None and it < ATTENTION_ITERS - 1:
                with torch.no_grad():
                    means, logprobs = self._decode_slots(slots)
                trace.append(StageRecord("layer", it, means, logprobs.exp(), attn.detach().view(b, k, 1, h, w)))

        means, mask_logprobs = self._decode_slots(slots)
        masks = mask_logprobs.exp()
        if trace is not None:
            trace.append(
                StageRecord(
                    "layer", ATTENTION_ITERS - 1, means.detach(), masks.detach(), attn.detach().view(b, k, 1, h, w)
                )
            )
        x = (images + 1.0) / 2.0  # [B, C, H, W] in [0, 1]
        reconstruction = (means * masks).sum(dim=1)  # [B, C, H, W]
        squared = (x - reconstruction).pow(2)  # [B, C, H, W]
        per_image = squared.sum(dim=(1, 2, 3))  # [B]
        out = ModelOutput(
            loss=per_image.mean(),
            loss_per_image=per_image,
            nll=None,
            kl=None,
            mse=squared.mean(dim=(1, 2, 3)),
            means=means,
            masks=masks,
            mask_logprobs=mask_logprobs,
            reconstruction=reconstruction,
            posterior_loc=slots,
            posterior_softplus=None,
            posterior_scale=None,
            samples=slots,
            deltas=x.new_zeros(0),
            refinement_iters=0,
            trace=trace,
        )
        return out if torch.is_grad_enabled() else detach_output(out)
