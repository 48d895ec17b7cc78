"""The 4-channel position embedding of the encoder and of the spatial-broadcast decoders.

Each pixel (row i, column j) of an H×W grid carries four linear ramps:

    [1 − i/(H−1),  i/(H−1),  j/(W−1),  1 − j/(W−1)]

The original builds this as a [W, H, 4] tensor and adds it to an [H, W, ·] feature map, which only works
for square grids; for square grids the formula above is exactly what it computes (the first two ramps run
down the rows, the last two across the columns). A learned `nn.Linear(4, F)` projects it to F channels;
that projection is the same for every image and slot, so callers project the grid once per forward.
"""

from __future__ import annotations

import torch


def position_grid(
    height: int, width: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """The [H, W, 4] ramps above (values in [0, 1]), made on `device` (no copy from the host)."""

    def ramp(start: float, end: float, n: int, axis: int) -> torch.Tensor:
        values = torch.linspace(start, end, n, dtype=dtype, device=device)  # [n]
        shape = (n, 1) if axis == 0 else (1, n)
        return values.view(shape).expand(height, width)  # [H, W]

    return torch.stack(
        [ramp(1.0, 0.0, height, 0), ramp(0.0, 1.0, height, 0), ramp(0.0, 1.0, width, 1), ramp(1.0, 0.0, width, 1)],
        dim=-1,
    ).contiguous()  # [H, W, 4]


def fourier_position_grid(
    height: int,
    width: int,
    frequencies: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The four ramps of `position_grid` followed by sin(2^k·π·u) and cos(2^k·π·u), k = 0..F−1, of the row
    ramp u = i/(H−1) and of the column ramp j/(W−1): [H, W, 4 + 4F] (F = `frequencies`; 0 gives the ramps).

    A network fed only linear ramps learns high spatial frequencies slowly (spectral bias); with these, a
    decoder can place a small shape after a few layers (F = 4 reaches 8 periods across the grid)."""
    ramps = position_grid(height, width, dtype=dtype, device=device)  # [H, W, 4]
    if frequencies == 0:
        return ramps
    scales = torch.pi * 2.0 ** torch.arange(frequencies, dtype=dtype, device=device)  # [F]
    angles = torch.cat([ramps[..., 1:2] * scales, ramps[..., 2:3] * scales], dim=-1)  # [H, W, 2F]
    return torch.cat([ramps, angles.sin(), angles.cos()], dim=-1).contiguous()  # [H, W, 4 + 4F]
