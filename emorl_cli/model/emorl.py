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
not `loss_per_image`: see grad_reuse.py; with that shortcut the returned means, masks and reconstruction
are values without the decoder's graph).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


DECODER_CHUNK_BYTES = 16 * 2**20  # default `EfficientMORL.decoder_chunk_bytes`


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
        # With the shortcut on a CPU: decode and backpropagate this many bytes of decoder activations at a
        # time (whole images; None: all at once, faster by ~5% in fp32 for twice the peak memory). On a GPU
        # the whole batch runs at once.
        self.decoder_chunk_bytes: Optional[int] = DECODER_CHUNK_BYTES

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

    # ------------------------------------------------------------------------------------------ stages

    def _score_stage(self, run: _Pass, stage: int, kl: torch.Tensor, settle: bool) -> None:
        """Decode the stage's sample, score the image and add ℓ_i to the weighted loss.

        With `settle` the decoder is backpropagated now (grad_reuse.py, in chunks of images on a CPU) and
        its weight gradients, scaled by the stage's weight in the loss, ride on `run.injected` (value 0);
        the stage's means and masks are then values without the decoder's graph.
        """
        weight = stage_weight(stage, run.iters)
        if settle:
            nll, injection, (means, mask_logprobs) = settle_decoder_gradients(
                lambda z, images: self._score_rows(run.x[images], z),
                run.z,
                run.batch,
                self.hvae_networks.image_decoder,
                self._images_per_chunk(run.z),
            )
            run.injected = run.injected + _times(injection, weight * run.objective.nll_weight / run.batch)
        else:
            nll, means, mask_logprobs = self._score_rows(run.x, run.z)
        run.means, run.mask_logprobs, run.nll, run.kl = means, mask_logprobs, nll, kl
        run.per_image = run.objective.per_image(nll, kl)  # ℓ_i [B]
        run.total = run.total + weight * run.per_image  # [B]

    def _score_rows(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images x [b, C, H, W] in [0, 1] and their slots z [b·K, D] → (NLL [b], means, mask log-probs)."""
        means, mask_logprobs = self._decode_slots(z, x.shape[0])
        return image_nll(self.cfg.image_likelihood, x, means, mask_logprobs, self.cfg.log_scale), means, mask_logprobs

    def _images_per_chunk(self, z: torch.Tensor) -> Optional[int]:
        """Images per decoder chunk: `decoder_chunk_bytes` of hidden activations (None: no chunks, on a GPU)."""
        if self.decoder_chunk_bytes is None or z.device.type != "cpu":
            return None
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else z.dtype
        per_image = self.K * self.hvae_networks.image_decoder.hidden_elements() * dtype.itemsize
        return max(1, self.decoder_chunk_bytes // per_image)

    def _stage0(self, run: _Pass, bottom_up: BottomUp, noise: Optional[NoiseFn], record: bool) -> None:
        """Stage 0: z ~ q(z; λ^L) from the bottom-up layers, scored with the hierarchical KL."""
        lamda = bottom_up.lamda
        if not lamda.requires_grad:  # inference: the refinement gradient still needs a leaf to differentiate
            lamda = lamda.detach().requires_grad_(True)
        run.lamda = lamda
        run.posterior = DiagonalGaussian.from_params(lamda)  # q(z^L) over [N, D]
        run.z = run.posterior.rsample(noise)  # [N, D]
        hierarchy = bottom_up.posteriors + [run.posterior] if self.cfg.stochastic_layers > 0 else []
        kl, run.refine_prior = self._stage0_kl(hierarchy, run.x, noise)  # [B]
        self._score_stage(run, 0, kl, settle=run.settle)
        if record:
            run.trace = self._layer_records(bottom_up, run.means, run.mask_logprobs, run.batch)

    def _refinement_stage(self, run: _Pass, step: int, hidden: torch.Tensor, noise: Optional[NoiseFn]) -> torch.Tensor:
        """Stage i ≥ 1: λ ← λ + Δλ(λ, ∇λ ℓ_{i−1}), z ~ q(z; λ), scored against the refinement prior.
        Returns the refinement network's new hidden state."""
        (grad,) = torch.autograd.grad(
            run.objective.refinement_target(run.per_image), run.lamda, retain_graph=run.training_graph
        )  # ∇λ ℓ_{i−1} at the current λ [N, 2D]
        delta, hidden = self.refinenet(run.lamda, grad, hidden)
        run.lamda = run.lamda + delta  # λ^{L,i} [N, 2D]
        run.deltas.append(delta.detach().norm(dim=1).mean())
        run.posterior = DiagonalGaussian.from_params(run.lamda)
        run.z = run.posterior.rsample(noise)  # [N, D]
        prior = run.refine_prior if run.refine_prior is not None else DiagonalGaussian.standard(run.posterior.loc)
        kl = gaussian_kl(run.posterior, prior).view(run.batch, self.K).sum(1)  # [B]
        self._score_stage(run, step, kl, settle=run.settle)
        if run.trace is not None:
            run.trace.append(StageRecord("refinement", step, run.means.detach(), run.mask_logprobs.detach().exp()))
        return hidden

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
        iters = self.cfg.refinement_iters if refinement_iters is None else int(refinement_iters)
        if iters < 0:
            raise ValueError(f"refinement_iters must be ≥ 0, got {iters}")
        training_graph = torch.is_grad_enabled()
        x = (images + 1.0) / 2.0  # [B, C, H, W] in [0, 1]
        run = _Pass(
            x=x,
            objective=Objective.elbo() if objective is None else objective,
            iters=iters,
            batch=images.shape[0],
            training_graph=training_graph,
            settle=self.reuse_decoder_gradients and training_graph and reuse_is_safe(images.device.type),
        )
        keys, values = self.hvae_networks.encode(images)  # [B, H*W, D] each
        bottom_up = self.hvae_networks.bottom_up(keys, values, noise)
        with torch.enable_grad():  # refinement needs ∇λ even when the caller is in no_grad
            self._stage0(run, bottom_up, noise, record)
            hidden = self.refinenet.initial_state(run.batch * self.K, run.lamda)  # [1, N, D]
            for step in range(1, iters + 1):
                hidden = self._refinement_stage(run, step, hidden, noise)
        out = self._output(run)
        return out if training_graph else detach_output(out)

    def _output(self, run: _Pass) -> ModelOutput:
        """The final stage's tensors and the weighted loss as a `ModelOutput`."""
        b, k, d = run.batch, self.K, self.z_size
        masks = run.mask_logprobs.exp()  # [B, K, 1, H, W]
        reconstruction = (run.means * masks).sum(dim=1)  # [B, C, H, W]
        loc, softplus = run.lamda.chunk(2, dim=1)  # [N, D] each
        return ModelOutput(
            loss=run.total.mean() + run.injected,
            loss_per_image=run.total,
            nll=run.nll,
            kl=run.kl,
            mse=(run.x - reconstruction).pow(2).mean(dim=(1, 2, 3)),
            means=run.means,
            masks=masks,
            mask_logprobs=run.mask_logprobs,
            reconstruction=reconstruction,
            posterior_loc=loc.reshape(b, k, d),
            posterior_softplus=softplus.reshape(b, k, d),
            posterior_scale=run.posterior.std.reshape(b, k, d),
            samples=run.z.reshape(b, k, d),
            deltas=torch.stack(run.deltas) if run.deltas else run.x.new_zeros(0),
            refinement_iters=run.iters,
            trace=run.trace,
        )

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


@dataclass
class _Pass:
    """The running state of one forward pass (N = B·K slot rows): what each stage reads and updates."""

    x: torch.Tensor  # [B, C, H, W] in [0, 1]
    objective: Objective
    iters: int  # I of this call
    batch: int  # B
    training_graph: bool  # outside no_grad: keep the graph for `loss.backward()`
    settle: bool  # decoder-gradient reuse (grad_reuse.py) allowed in this pass
    lamda: Optional[torch.Tensor] = None  # current λ [N, 2D]
    posterior: Optional[DiagonalGaussian] = None  # q(z; λ)
    z: Optional[torch.Tensor] = None  # its sample [N, D]
    refine_prior: Optional[DiagonalGaussian] = None  # prior of the refinement stages (None: N(0, I))
    means: Optional[torch.Tensor] = None  # [B, K, C, H, W] of the current stage
    mask_logprobs: Optional[torch.Tensor] = None  # [B, K, 1, H, W]
    nll: Optional[torch.Tensor] = None  # [B]
    kl: Optional[torch.Tensor] = None  # [B]
    per_image: Optional[torch.Tensor] = None  # ℓ_i [B]
    total: torch.Tensor | float = 0.0  # Σ_i weight_i·ℓ_i [B]
    injected: torch.Tensor | float = 0.0  # Σ_i c_i·InjectGradients (value 0), see grad_reuse.py
    deltas: list[torch.Tensor] = field(default_factory=list)  # ‖Δλ‖ per refinement step
    trace: Optional[list[StageRecord]] = None


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
