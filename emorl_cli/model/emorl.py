"""EfficientMORL (Emami et al., ICML 2021): bottom-up hierarchical inference + I refinement steps.

Forward pass for images x [B, 3, H, W] in [-1, 1] (N = B·K slot rows):

    stage 0   λ^L from the L bottom-up layers (hvae.py); z ~ q(z; λ^L); decode; NLL; hierarchical KL
    stage i   λ ← λ + RefinementNetwork(λ, ∇λ ℓ_{i−1}); z ~ q(z; λ); decode; NLL; KL(q(z; λ) ‖ p_refine)
    loss      Σ_{i=0..I} (I+3−i)/(I+1) · mean_b ℓ_{i,b}          (the original's weights)

KL at stage 0 (reversed prior, the default): KL(q(z^L) ‖ N(0, I)) + Σ_{l<L} KL(q(z^l) ‖ p(z^l | z^{l+1})),
with z^{l+1} a fresh sample of q(z^{l+1}); bottom-up prior: KL(q(z^1) ‖ N(0, I)) + Σ_{l>1} KL(q(z^l) ‖
p(z^l | z^{l−1})). During refinement the prior is p(z^1 | z^2) from stage 0 (reversed prior++) or N(0, I).

Inference: call under `torch.no_grad()`. The refinement steps need ∇λ, so the part after the bottom-up
layers runs under `torch.enable_grad()` inside `forward` (from a detached λ), and every returned tensor is
detached; nothing else is tracked. Outside `no_grad` (training) the whole pass stays on one graph and
`out.loss.backward()` trains every network, including through the refinement steps (train with `loss`,
not `loss_per_image`: see grad_reuse.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from emorl_cli.config import ModelConfig
from emorl_cli.errors import DataError
from emorl_cli.model.distributions import DiagonalGaussian, NoiseFn, gaussian_kl
from emorl_cli.model.grad_reuse import settle_decoder_gradients
from emorl_cli.model.hvae import BottomUp, HVAENetworks
from emorl_cli.model.likelihood import image_nll
from emorl_cli.model.objective import Objective
from emorl_cli.model.output import ModelOutput, StageRecord
from emorl_cli.model.refinement import RefinementNetwork


def check_images(images: torch.Tensor, input_size: tuple[int, int, int]) -> None:
    """Raise DataError unless images is a float [B, C, H, W] batch of the configured size."""
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(input_size) or images.shape[0] == 0:
        raise DataError(
            f"the model expects images of shape [B, {', '.join(map(str, input_size))}] (model.input_size), "
            f"got {list(images.shape)}; resize the data or set model.input_size"
        )
    if not images.is_floating_point():
        raise DataError(f"images must be floats in [-1, 1], got dtype {images.dtype}; convert them first")


def reuse_is_safe(device_type: str) -> bool:
    """Whether grad_reuse.py's in-forward decoder backward is exact enough here: in full precision and
    under bf16 autocast (fp32's range, no loss scaling), not under fp16 autocast."""
    if not torch.is_autocast_enabled(device_type):
        return True
    return torch.get_autocast_dtype(device_type) == torch.bfloat16


def _times(tensor: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """tensor · factor in tensor's dtype, for a Python float or a 0-d tensor factor (a tensor GECO weight)."""
    return tensor * (factor.to(tensor.dtype) if isinstance(factor, torch.Tensor) else factor)


def stage_weight(stage: int, refinement_iters: int) -> float:
    """Weight (I+3−i)/(I+1) of stage i in the training loss (earlier stages weigh more)."""
    return (refinement_iters + 3 - stage) / (refinement_iters + 1)


class EfficientMORL(nn.Module):
    """EfficientMORL for a `ModelConfig` (kind 'emorl'). Parameters: `hvae_networks.*`, `refinenet.*`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.K, self.z_size = cfg.K, cfg.z_size
        self.hvae_networks = HVAENetworks(cfg)
        self.refinenet = RefinementNetwork(cfg.z_size, cfg.init_gain)
        # Train-time shortcut of grad_reuse.py (same gradients); on in fp32 and under bf16 autocast, off
        # under fp16 autocast, where gradients computed inside forward would miss the loss scaling and
        # could underflow.
        self.reuse_decoder_gradients = True

    # ------------------------------------------------------------------------------------------ decoding

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [N, D] → (rgb [N, 3, H, W] in [0, 1], mask_logits [N, H, W]); N need not be a multiple of K."""
        return self.hvae_networks.image_decoder(z)

    def _decode_slots(self, z: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """z [B·K, D] → means [B, K, C, H, W], mask log-probabilities [B, K, 1, H, W]."""
        c, h, w = self.cfg.input_size
        rgb, logits = self.decode(z)
        means = rgb.float().view(batch, self.K, c, h, w)  # the likelihood is summed in float32
        with torch.autocast(z.device.type, enabled=False):  # mask log-softmax in float32 under mixed precision
            mask_logprobs = torch.log_softmax(logits.float().view(batch, self.K, 1, h, w), dim=1)
        return means, mask_logprobs

    def _reconstruct(
        self, z: torch.Tensor, x: torch.Tensor, settle: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode z [B·K, D] and score x → (means, mask log-probs, NLL [B], gradient injection term).

        With `settle` the decoder is backpropagated now (grad_reuse.py); else the injection term is 0.
        """
        means, mask_logprobs = self._decode_slots(z, x.shape[0])
        nll = image_nll(self.cfg.image_likelihood, x, means, mask_logprobs, self.cfg.log_scale)  # [B]
        if not settle:
            return means, mask_logprobs, nll, x.new_zeros(())
        nll, injection = settle_decoder_gradients(nll, z, self.hvae_networks.image_decoder)
        return means, mask_logprobs, nll, injection

    # ------------------------------------------------------------------------------------------ KL terms

    def _stage0_kl(
        self, posteriors: list[DiagonalGaussian], like: torch.Tensor, noise: Optional[NoiseFn]
    ) -> tuple[torch.Tensor, Optional[DiagonalGaussian]]:
        """Hierarchical KL of the L layers' posteriors → (KL [B], prior of the refinement steps or None).

        None means N(0, I) (no reversed prior++ or L = 0). With L = 0 the KL is 0, as in the original.
        """
        batch, layers = like.shape[0], len(posteriors)
        kl = like.new_zeros(batch)  # [B]
        reverse = not self.cfg.bottom_up_prior
        prior = None
        for layer in reversed(range(layers)) if reverse else range(layers):
            neighbour = layer + 1 if reverse else layer - 1
            if neighbour in (layers, -1):  # the top (reversed) or first (bottom-up) layer: N(0, I)
                prior = DiagonalGaussian.standard(posteriors[layer].loc)
            else:  # p(z^l | z^{l±1}) from a fresh sample of the neighbouring posterior
                prior = self.hvae_networks.indep_prior(posteriors[neighbour].rsample(noise))
            kl = kl + gaussian_kl(posteriors[layer], prior).view(batch, self.K).sum(1)  # [B]
        return kl, prior if (self.cfg.reverse_prior_plusplus and layers) else None

    # ------------------------------------------------------------------------------------------ forward

    def forward(
        self,
        images: torch.Tensor,
        objective: Optional[Objective] = None,
        *,
        refinement_iters: Optional[int] = None,
        record: bool = False,
        noise: Optional[NoiseFn] = None,
    ) -> ModelOutput:
        """Infer the K slots of each image and compute the loss.

        Args:
            images: [B, 3, H, W] in [-1, 1], any batch size, any memory layout.
            objective: what the refinement gradient and the loss optimise (default `Objective.elbo()`).
            refinement_iters: I for this call (None → model.refinement_iters; training passes the
                curriculum's I).
            record: also return per-stage means, masks and attention (`ModelOutput.trace`).
            noise: optional `noise(shape) -> Tensor` of standard normals used for every sample
                (shape [B·K, D]); default torch.randn on the global generator.
        """
        check_images(images, self.cfg.input_size)
        objective = Objective.elbo() if objective is None else objective
        iters = self.cfg.refinement_iters if refinement_iters is None else int(refinement_iters)
        if iters < 0:
            raise ValueError(f"refinement_iters must be ≥ 0, got {iters}")
        training_graph = torch.is_grad_enabled()
        b, k, d = images.shape[0], self.K, self.z_size
        x = (images + 1.0) / 2.0  # [B, C, H, W] in [0, 1]

        keys, values = self.hvae_networks.encode(images)  # [B, H*W, D] each
        bottom_up = self.hvae_networks.bottom_up(keys, values, noise)

        settle = self.reuse_decoder_gradients and training_graph and reuse_is_safe(images.device.type)
        injected = x.new_zeros(())  # Σ_i c_i·InjectGradients (value 0), see grad_reuse.py
        with torch.enable_grad():  # refinement needs ∇λ even when the caller is in no_grad
            lamda = bottom_up.lamda
            if not lamda.requires_grad:
                lamda = lamda.detach().requires_grad_(True)
            posterior = DiagonalGaussian.from_params(lamda)  # q(z^L) over [N, D]
            z = posterior.rsample(noise)  # [N, D]
            means, mask_logprobs, nll, injection = self._reconstruct(z, x, settle and iters > 0)
            hierarchy = bottom_up.posteriors + [posterior] if self.cfg.stochastic_layers > 0 else []
            kl, refine_prior = self._stage0_kl(hierarchy, x, noise)  # [B]
            per_image = objective.per_image(nll, kl)  # ℓ_0 [B]
            total = stage_weight(0, iters) * per_image  # [B]
            injected = injected + _times(injection, stage_weight(0, iters) * objective.nll_weight / b)
            trace = self._layer_records(bottom_up, means, mask_logprobs, b) if record else None

            hidden = self.refinenet.initial_state(b * k, lamda)  # [1, N, D]
            deltas = []
            for step in range(1, iters + 1):
                (grad,) = torch.autograd.grad(
                    objective.refinement_target(per_image), lamda, retain_graph=training_graph
                )  # ∇λ ℓ_{i−1} [N, 2D]
                delta, hidden = self.refinenet(lamda, grad, hidden)
                lamda = lamda + delta  # λ^{L,i} [N, 2D]
                deltas.append(delta.detach().norm(dim=1).mean())
                posterior = DiagonalGaussian.from_params(lamda)
                z = posterior.rsample(noise)  # [N, D]
                means, mask_logprobs, nll, injection = self._reconstruct(z, x, settle and step < iters)
                prior = refine_prior if refine_prior is not None else DiagonalGaussian.standard(posterior.loc)
                kl = gaussian_kl(posterior, prior).view(b, k).sum(1)  # [B]
                per_image = objective.per_image(nll, kl)  # ℓ_i [B]
                total = total + stage_weight(step, iters) * per_image
                injected = injected + _times(injection, stage_weight(step, iters) * objective.nll_weight / b)
                if trace is not None:
                    trace.append(StageRecord("refinement", step, means.detach(), mask_logprobs.detach().exp()))

        masks = mask_logprobs.exp()  # [B, K, 1, H, W]
        reconstruction = (means * masks).sum(dim=1)  # [B, C, H, W]
        loc, softplus = lamda.chunk(2, dim=1)  # [N, D] each
        out = ModelOutput(
            loss=total.mean() + injected,
            loss_per_image=total,
            nll=nll,
            kl=kl,
            mse=(x - reconstruction).pow(2).mean(dim=(1, 2, 3)),
            means=means,
            masks=masks,
            mask_logprobs=mask_logprobs,
            reconstruction=reconstruction,
            posterior_loc=loc.reshape(b, k, d),
            posterior_softplus=softplus.reshape(b, k, d),
            posterior_scale=posterior.std.reshape(b, k, d),
            samples=z.reshape(b, k, d),
            deltas=torch.stack(deltas) if deltas else x.new_zeros(0),
            refinement_iters=iters,
            trace=trace,
        )
        return out if training_graph else detach_output(out)

    def _layer_records(
        self, bottom_up: BottomUp, final_means: torch.Tensor, final_logprobs: torch.Tensor, batch: int
    ) -> list[StageRecord]:
        """Decoded sample and attention of every bottom-up layer (the last one is stage 0's decode)."""
        _, h, w = self.cfg.input_size
        attention = [a.detach().view(batch, self.K, 1, h, w) for a in bottom_up.attention]
        if not attention:  # L = 0: only the decoded sample of λ⁰
            return [StageRecord("initial", 0, final_means.detach(), final_logprobs.detach().exp())]
        records = []
        with torch.no_grad():
            for layer, sample in enumerate(bottom_up.samples):
                means, logprobs = self._decode_slots(sample, batch)
                records.append(StageRecord("layer", layer, means, logprobs.exp(), attention[layer]))
        records.append(
            StageRecord("layer", len(attention) - 1, final_means.detach(), final_logprobs.detach().exp(), attention[-1])
        )
        return records


def detach_output(out: ModelOutput) -> ModelOutput:
    """Detach every tensor of a ModelOutput (inference under no_grad)."""
    for name, value in vars(out).items():
        if isinstance(value, torch.Tensor):
            setattr(out, name, value.detach())
    if out.trace:
        for record in out.trace:
            for name, value in vars(record).items():
                if isinstance(value, torch.Tensor):
                    setattr(record, name, value.detach())
    return out
