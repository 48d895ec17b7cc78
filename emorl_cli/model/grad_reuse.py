"""Train-time shortcut: backpropagate through a refinement stage's decoder once instead of twice.

During training, stage i < I needs ∇λ ℓ_i for the refinement network (a backward pass through the decoder),
and later `loss.backward()` goes through the same decoder again. Both passes carry the same direction:
the decoder outputs of stage i feed only NLL_i, so ∂loss/∂outputs_i = c_i · ∂(Σ_b NLL_b)/∂outputs_i with
c_i = (stage weight) · (NLL weight of the objective) / B. So one backward pass of Σ_b NLL_b gives

    g_z = ∂ΣNLL/∂z_i  [N, D]     and     g_θ = ∂ΣNLL/∂θ_decoder,

after which the decoder graph is dropped and NLL_i is replaced by a surrogate with the same value and the
same gradient w.r.t. z_i (`nll.detach() + ⟨g_z, z⟩ − sg⟨g_z, z⟩` per image); the decoder weights get
c_i · g_θ through `InjectGradients` added to the scalar loss. The gradients are the same as without the
shortcut up to float summation order (tests compare them).

The last stage is settled the same way (its decoder is backpropagated once either way, but settled now
its activations are freed at once), and the backward pass can run a chunk of images at a time: decode a
chunk, backpropagate it, free it, so the activations of only one chunk are alive — a few MB instead of GBs
at 64×64 and above (see `settle_decoder_gradients`; on a CPU it halves a step's peak memory for about 5%
more time in fp32, none in bf16: docs/speed.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch


class InjectGradients(torch.autograd.Function):
    """Value 0; its backward hands `grads` (times the incoming gradient) to `params`."""

    @staticmethod
    def forward(ctx, grads: Sequence[torch.Tensor], *params: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.grads = tuple(grads)
        return params[0].new_zeros(())

    @staticmethod
    def backward(ctx, upstream: torch.Tensor):  # type: ignore[override]
        return (None, *(g * upstream for g in ctx.grads))


def settle_decoder_gradients(
    score: Callable[[torch.Tensor, slice], tuple[torch.Tensor, ...]],
    z: torch.Tensor,
    batch: int,
    decoder: torch.nn.Module,
    images_per_chunk: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One backward pass of Σ NLL through the decoder, a chunk of images at a time.

    Args:
        score: `score(z_rows, images)` decodes the slot rows of the images in the slice `images` and
            returns (NLL [b], other outputs with a leading image dimension...).
        z: [B·K, D] samples of every slot, rows grouped by image.
        batch: B.
        decoder: the module whose parameters get Σ NLL's gradient.
        images_per_chunk: images decoded and backpropagated together (None: all at once). A chunk's
            decoder graph is freed before the next chunk is decoded, so only one chunk's activations are
            alive at a time; the result is the same up to float summation order (the NLL is a sum over
            images, and the K slots of an image stay in one chunk).

    Returns:
        (surrogate NLL [B], injection term of value 0, the other outputs of `score` for all images,
        detached). Multiply the injection term by c_i (see module docstring) and add it to the scalar loss.
    """
    params = [p for p in decoder.parameters() if p.requires_grad]
    rows = z.shape[0] // batch  # K
    step = batch if images_per_chunk is None else max(1, images_per_chunk)
    nll_parts, g_z_parts, output_parts = [], [], []
    g_params: list[torch.Tensor] = []
    for start in range(0, batch, step):
        stop = min(batch, start + step)
        z_chunk = z[start * rows : stop * rows]  # [b·K, D]; the backward below stops at it
        nll_chunk, *outputs = score(z_chunk, slice(start, stop))
        grads = torch.autograd.grad(nll_chunk.sum(), [z_chunk, *params])  # frees this chunk's decoder graph
        g_z_parts.append(grads[0])
        g_params = list(grads[1:]) if not g_params else [a.add_(b) for a, b in zip(g_params, grads[1:], strict=True)]
        nll_parts.append(nll_chunk.detach())
        output_parts.append([o.detach() for o in outputs])
    nll = torch.cat(nll_parts)  # [B]
    g_z = torch.cat(g_z_parts)  # [B·K, D]
    linear = (z * g_z).reshape(batch, -1).sum(1)  # [B], gradient g_z w.r.t. z
    surrogate = nll + linear - linear.detach()
    injection = InjectGradients.apply(g_params, *params) if params else nll.new_zeros(())
    return surrogate, injection, [torch.cat(parts) for parts in zip(*output_parts, strict=True)]
