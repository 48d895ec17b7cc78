"""DualGRU: the recurrent update of EfficientMORL's bottom-up stochastic layers.

Two independent GRUs share one call: the first updates the posterior mean μ, the second the softplus
parameter s, each from its own copy of the attention update. With x = [x₁, x₂] and h = [h₁, h₂]
(halves of size D):

    [r₁, z₁] = σ(W_ih₁ x₁ + W_hh₁ h₁ + b),   [r₂, z₂] = σ(W_ih₂ x₂ + W_hh₂ h₂ + b)
    nⱼ = tanh(W_inⱼ xⱼ + b_inⱼ + rⱼ ⊙ (W_hnⱼ hⱼ + b_hnⱼ))
    hⱼ' = (1 − zⱼ) ⊙ nⱼ + zⱼ ⊙ hⱼ

The original builds block-diagonal weight matrices padded with zeros; multiplying the halves separately
gives the same numbers. Parameter names and their randn initialisation are the original's.
"""

from __future__ import annotations

import torch
from torch import nn


class DualGRUCell(nn.Module):
    """One step of the two GRUs. input [N, 2D], hidden [N, 2D] → new hidden [N, 2D]."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        if input_size != hidden_size:
            raise ValueError(f"DualGRU needs input_size == hidden_size, got {input_size} and {hidden_size}")
        h, i = hidden_size, input_size
        self.hidden_size = hidden_size
        self.weight_ih_1 = nn.Parameter(torch.randn(2 * h, i))  # → [r₁, z₁]
        self.weight_hh_1 = nn.Parameter(torch.randn(2 * h, h))
        self.weight_ih_2 = nn.Parameter(torch.randn(2 * h, i))  # → [r₂, z₂]
        self.weight_hh_2 = nn.Parameter(torch.randn(2 * h, h))
        self.bias_ih = nn.Parameter(torch.randn(4 * h))  # [r₁, z₁, r₂, z₂]
        self.bias_hh = nn.Parameter(torch.randn(4 * h))
        self.weight_in_1 = nn.Parameter(torch.randn(h, i))  # candidate n₁
        self.weight_hn_1 = nn.Parameter(torch.randn(h, h))
        self.weight_in_2 = nn.Parameter(torch.randn(h, i))  # candidate n₂
        self.weight_hn_2 = nn.Parameter(torch.randn(h, h))
        self.bias_in = nn.Parameter(torch.randn(2 * h))  # [n₁, n₂]
        self.bias_hn = nn.Parameter(torch.randn(2 * h))

    def forward(self, x: torch.Tensor, hx: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)  # [N, D] each
        h1, h2 = hx.chunk(2, dim=1)  # [N, D] each
        gates_x = torch.cat([x1 @ self.weight_ih_1.t(), x2 @ self.weight_ih_2.t()], dim=1)  # [N, 4D]
        gates_h = torch.cat([h1 @ self.weight_hh_1.t(), h2 @ self.weight_hh_2.t()], dim=1)  # [N, 4D]
        gates = gates_x + self.bias_ih + gates_h + self.bias_hh  # [N, 4D]
        reset_1, update_1, reset_2, update_2 = torch.sigmoid(gates).chunk(4, dim=1)  # [N, D] each
        reset = torch.cat([reset_1, reset_2], dim=1)  # [N, 2D]
        update = torch.cat([update_1, update_2], dim=1)  # [N, 2D]
        cand_x = torch.cat([x1 @ self.weight_in_1.t(), x2 @ self.weight_in_2.t()], dim=1)  # [N, 2D]
        cand_h = torch.cat([h1 @ self.weight_hn_1.t(), h2 @ self.weight_hn_2.t()], dim=1)  # [N, 2D]
        candidate = torch.tanh(cand_x + self.bias_in + reset * (cand_h + self.bias_hn))  # [N, 2D]
        return (1.0 - update) * candidate + update * hx  # [N, 2D]


class DualGRU(nn.Module):
    """Wrapper holding the cell as `.cell` (the original's parameter names: `gru.cell.*`)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.cell = DualGRUCell(input_size, hidden_size)

    def forward(self, x: torch.Tensor, hx: torch.Tensor) -> torch.Tensor:
        """x, hx: [N, 2D] → [N, 2D]: one step."""
        return self.cell(x, hx)
