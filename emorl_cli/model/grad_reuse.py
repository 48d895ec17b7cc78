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
"""

from __future__ import annotations

from collections.abc import Sequence

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
    nll: torch.Tensor, z: torch.Tensor, decoder: torch.nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """One backward pass of Σ NLL through the decoder → (surrogate NLL [B], injection term of value 0).

    nll: [B] per-image NLL computed from decoder(z); z: [B·K, D]. Multiply the injection term by
    c_i (see module docstring) and add it to the scalar loss.
    """
    params = [p for p in decoder.parameters() if p.requires_grad]
    grads = torch.autograd.grad(nll.sum(), [z, *params])  # frees this stage's decoder graph
    g_z, g_params = grads[0], grads[1:]
    linear = (z * g_z).reshape(nll.shape[0], -1).sum(1)  # [B], gradient g_z w.r.t. z
    surrogate = nll.detach() + linear - linear.detach()
    injection = InjectGradients.apply(g_params, *params) if params else nll.new_zeros(())
    return surrogate, injection
