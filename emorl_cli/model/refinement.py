"""The iterative-amortised refinement network of EfficientMORL (paper §3.3, I steps).

Given the current posterior parameters λ = [μ, s] of every slot ([N, 2D], N = images·K) and the gradient
∇λ of the objective, it proposes an update Δλ:

    e = MLP([λ, LN(∇μ), LN(∇s)])        LN without affine parameters; the gradients are treated as inputs
    e, h = GRU(e, h)                      (one step; h starts at zero for each forward pass)
    Δλ = [W_loc e + b, W_sp e + b]

Because the normalised gradient is detached, no second-order graph is needed (the original builds one with
`create_graph=True` during training and throws it away).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emorl_cli.model.weight_init import XAVIER_GAIN, xavier_init

HIDDEN = 128
LN_EPS = 1e-5


class RefinementNetwork(nn.Module):
    """(λ [N, 2D], ∇λ [N, 2D], h [1, N, D]) → (Δλ [N, 2D], h' [1, N, D])."""

    def __init__(self, z_size: int, init_gain: float = XAVIER_GAIN):
        super().__init__()
        self.z_size = z_size
        self.recurrence = nn.GRU(z_size, z_size)
        self.encoding = nn.Sequential(nn.Linear(4 * z_size, HIDDEN), nn.ELU(), nn.Linear(HIDDEN, z_size))
        self.loc = nn.Linear(z_size, z_size)
        self.softplus = nn.Linear(z_size, z_size)
        xavier_init(self.loc, self.softplus, self.encoding, gain=init_gain)

    def initial_state(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        """h₀ = 0: [1, N, D]."""
        return like.new_zeros(1, rows, self.z_size)

    def forward(
        self, lamda: torch.Tensor, grad: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.z_size
        grad_loc, grad_sp = grad.detach().chunk(2, dim=1)  # [N, D] each
        grad_loc = F.layer_norm(grad_loc, (d,), eps=LN_EPS)  # [N, D]
        grad_sp = F.layer_norm(grad_sp, (d,), eps=LN_EPS)  # [N, D]
        e = self.encoding(torch.cat([lamda, grad_loc, grad_sp], dim=1))  # [N, D]
        e, hidden = self.recurrence(e.unsqueeze(0), hidden)  # [1, N, D], [1, N, D]
        e = e.squeeze(0)  # [N, D]
        return torch.cat([self.loc(e), self.softplus(e)], dim=1), hidden  # [N, 2D], [1, N, D]
