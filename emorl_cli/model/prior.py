"""The learned conditional prior p(z^l | z^{l±1}) of EfficientMORL's hierarchy (paper §3.2).

An MLP maps a sample of the neighbouring layer's posterior, slot by slot, to the parameters [μ, s] of a
diagonal Gaussian (σ from s as in `distributions.softplus_to_std`). Names are the original's
(`indep_prior.z_linear`, `z_mu`, `z_softplus`).
"""

from __future__ import annotations

import torch
from torch import nn

from emorl_cli.model.distributions import DiagonalGaussian
from emorl_cli.model.weight_init import XAVIER_GAIN, xavier_init

HIDDEN = 128


class IndependentPrior(nn.Module):
    """z [N, D] → DiagonalGaussian over [N, D] (the same MLP for every slot)."""

    def __init__(self, z_size: int, init_gain: float = XAVIER_GAIN):
        super().__init__()
        self.z_linear = nn.Sequential(nn.Linear(z_size, HIDDEN), nn.ELU())
        self.z_mu = nn.Linear(HIDDEN, z_size)
        self.z_softplus = nn.Linear(HIDDEN, z_size)
        xavier_init(self.z_linear, self.z_mu, self.z_softplus, gain=init_gain)

    def forward(self, z: torch.Tensor) -> DiagonalGaussian:
        hidden = self.z_linear(z)  # [N, 128]
        return DiagonalGaussian.from_loc_softplus(self.z_mu(hidden), self.z_softplus(hidden))
