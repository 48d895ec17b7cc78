"""EfficientMORL's bottom-up hierarchical inference (paper §3.1–3.2): L stochastic layers of slot attention.

Starting from λ⁰ (a learned [μ, s] shared by all slots), each layer l = 1..L

    1. samples z^{l−1} ~ q(z; λ^{l−1}) for every slot,
    2. reads the image with slot attention, queries from LayerNorm(z^{l−1}) (model.layer_noise says how the
       samples of l ≥ 2 are drawn),
    3. updates μ and s with the DualGRU (or one GRU on a projected update) plus a residual MLP each,

giving the posterior q(z^l | x) = N(μ^l, σ(s^l)). The module also owns the image decoder and the learned
conditional prior used by the hierarchical KL. Attribute names are the original's (`hvae_networks.*`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from emorl_cli.config import ModelConfig
from emorl_cli.model.attention import attend
from emorl_cli.model.decoder import SpatialBroadcastDecoder
from emorl_cli.model.distributions import DiagonalGaussian, NoiseFn, standard_normal
from emorl_cli.model.dual_gru import DualGRU
from emorl_cli.model.encoder import conv_stack, encode_image, token_mlp
from emorl_cli.model.prior import IndependentPrior
from emorl_cli.model.weight_init import xavier_init


@dataclass
class BottomUp:
    """Result of the L bottom-up layers. N = B·K rows, images' slots contiguous.

    lamda: [N, 2D] λ^L = [μ, s] of the last layer (λ⁰ when L = 0);
    posteriors: q(z^l) of the layers below the last (l = 1..L−1), each over [N, D];
    samples: the z^l drawn from them ([N, D] each) — the last layer's sample is drawn by the caller;
    attention: per layer, [B, K, H·W] softmax over slots (+ε).
    """

    lamda: torch.Tensor
    posteriors: list[DiagonalGaussian] = field(default_factory=list)
    samples: list[torch.Tensor] = field(default_factory=list)
    attention: list[torch.Tensor] = field(default_factory=list)


class HVAENetworks(nn.Module):
    """Encoder, L bottom-up layers, decoder and conditional prior of EfficientMORL."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, h, w = cfg.input_size
        d = cfg.z_size
        self.K, self.z_size, self.num_layers = cfg.K, d, cfg.stochastic_layers
        self.use_dual_gru = cfg.use_dual_gru
        self.layer_noise = cfg.layer_noise
        self.scale = d**-0.5 / cfg.attention_temperature  # 1/(T·√D)

        width = cfg.encoder_width
        self.pos_embed_projection = nn.Linear(4, width)
        if cfg.position_scale != 1.0:
            with torch.no_grad():
                self.pos_embed_projection.weight.mul_(cfg.position_scale)  # the bias is the same at every pixel
        self.encoder_pt_1 = conv_stack(c, width)
        self.encoder_pt_2 = token_mlp(width)
        self.norm_slots = nn.LayerNorm(d)
        self.norm_mu_pre_ff = nn.LayerNorm(d)
        self.norm_softplus_pre_ff = nn.LayerNorm(d)
        self.to_q = nn.Linear(d, d, bias=False)
        self.to_k = nn.Linear(width, d, bias=False)
        self.to_v = nn.Linear(width, d, bias=False)
        if self.use_dual_gru:
            self.gru = DualGRU(d, d)
        else:
            self.gru = nn.GRU(2 * d, 2 * d)
            self.project_update = nn.Linear(d, 2 * d)
            xavier_init(self.project_update, gain=cfg.init_gain)
        self.mlp_mu = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.mlp_softplus = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.image_decoder = SpatialBroadcastDecoder(
            cfg.image_decoder, d, h, w, cfg.decoder_width, cfg.decoder_position_frequencies
        )
        # λ⁰ = [μ, s]: [1, 2D] shared by the slots (the paper), or [K, 2D] with slot_init 'per_slot', whose
        # means start apart (N(0, 1)) so that the slots differ before any noise is drawn
        rows = cfg.K if cfg.slot_init == "per_slot" else 1
        loc = torch.randn(rows, d) if cfg.slot_init == "per_slot" else torch.zeros(rows, d)
        self.init_posterior = nn.Parameter(torch.cat([loc, torch.ones(rows, d)], dim=1))
        self.indep_prior = IndependentPrior(d, cfg.init_gain)
        xavier_init(
            self.encoder_pt_1, self.encoder_pt_2, self.to_q, self.to_k, self.to_v,
            self.mlp_mu, self.mlp_softplus, self.image_decoder, gain=cfg.init_gain,
        )  # fmt: skip

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] in [-1, 1] → attention keys and values, [B, H·W, D] each."""
        tokens = encode_image(images, self.encoder_pt_1, self.pos_embed_projection, self.encoder_pt_2)
        return self.to_k(tokens), self.to_v(tokens)

    def _recurrent_update(self, updates: torch.Tensor, lamda: torch.Tensor) -> torch.Tensor:
        """GRU step on [μ, s]: updates [B, K, D], λ [N, 2D] → [N, 2D]."""
        n = lamda.shape[0]
        if self.use_dual_gru:
            both = torch.cat([updates, updates], dim=2).reshape(n, 2 * self.z_size)  # [N, 2D], one copy per GRU
            return self.gru(both, lamda)
        projected = self.project_update(updates).reshape(1, n, 2 * self.z_size)  # [1, N, 2D]
        out, _ = self.gru(projected, lamda.reshape(1, n, 2 * self.z_size))
        return out[0]  # [N, 2D]

    def bottom_up(self, keys: torch.Tensor, values: torch.Tensor, noise: Optional[NoiseFn] = None) -> BottomUp:
        """The L layers. keys, values: [B, H·W, D]."""
        b = keys.shape[0]
        n, d = b * self.K, self.z_size
        lamda = self.init_posterior.repeat(
            n // self.init_posterior.shape[0], 1
        )  # [N, 2D], slot k of each image ← row k
        result = BottomUp(lamda)
        if self.num_layers == 0:
            return result
        start = DiagonalGaussian.from_params(lamda)
        eps = standard_normal(start.loc.shape, start.loc, noise)  # ε [N, D], kept by 'shared'
        slots = start.reparameterize(eps)  # z⁰ [N, D]
        for layer in range(self.num_layers):
            q = self.to_q(self.norm_slots(slots.view(b, self.K, d))) * self.scale  # [B, K, D]
            updates, attn = attend(q, keys, values)  # [B, K, D], [B, K, H*W]
            result.attention.append(attn)
            mu, sp = self._recurrent_update(updates, lamda).chunk(2, dim=1)  # [N, D] each
            mu = mu + self.mlp_mu(self.norm_mu_pre_ff(mu))
            sp = sp + self.mlp_softplus(self.norm_softplus_pre_ff(sp))
            lamda = torch.cat([mu, sp], dim=1)  # λ^l [N, 2D]
            if layer < self.num_layers - 1:
                posterior = DiagonalGaussian.from_params(lamda)
                if self.layer_noise == "shared":
                    slots = posterior.reparameterize(eps)  # z^l [N, D], the slot's own ε again
                else:
                    slots = posterior.rsample(noise)  # z^l [N, D]
                result.posteriors.append(posterior)
                result.samples.append(slots)
        result.lamda = lamda
        return result
