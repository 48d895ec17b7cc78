"""Spatial-broadcast decoders (Watters et al. 2019): one latent z ∈ R^D per slot → RGB means and a mask logit.

z is tiled over a grid, a learned projection of the 4-channel position embedding is added, and a small
CNN maps the grid to 4 channels: sigmoid(first 3) are the component's RGB means in [0, 1], the 4th is the
unnormalised mask logit. Three architectures, as in the original:

| kind     | grid          | layers                                                        | used for            |
| -------- | ------------- | ------------------------------------------------------------- | ------------------- |
| `small`  | (H+6)×(W+6)   | 3 × Conv 5×5 pad 1 (32, ReLU), Conv 3×3 pad 1 → 4             | Tetrominoes         |
| `iodine` | (H+10)×(W+10) | 4 × Conv 3×3 no pad (64, ELU), Conv 3×3 no pad → 4            | CLEVR, dSprites     |
| `big`    | (H/16)×(W/16) | 4 × ConvT 5×5 stride 2 (64, ReLU), ConvT 5×5, ConvT 3×3 → 4   | Slot Attention CLEVR |

The original fixes the `big` grid at 6×6 (96×96 output); H/16 gives the same there and 8×8 for 128×128.

A fourth kind is emorl's own, not the paper's: `upsample`, for CPUs, where the full-size grids of `iodine` are
most of a 64×64 training step. It broadcasts z over an (H/4)×(W/4) grid and doubles the grid twice:

| kind       | grid        | layers (32 channels, ReLU)                                                      |
| ---------- | ----------- | ------------------------------------------------------------------------------- |
| `upsample` | (H/4)×(W/4) | 2 × Conv 3×3 pad 1, ConvT 4×4 stride 2, Conv 3×3 pad 1, ConvT 4×4 stride 2, … |
|            |             | … Conv 3×3 pad 1 → 4                                                            |

At 64×64 and width 32 it does about a quarter of `iodine`'s multiply-adds per slot (38 M against 140 M).

Parameter names (`decode.N`, `pos_embed_projection`) are the original's, so its checkpoints load as is.

Speed-up (same numbers up to float rounding): the first convolution sees a spatially constant z plus the
same position map for every slot, and convolution is linear, so

    conv(z ⊕ P) = conv(P) + Σ_{kernel taps inside the grid} W · z

`conv(P)` is computed once per call; the z part is a [N, D] × [D, C_out] product per *border case* (output
pixels whose kernel window overlaps the zero padding see only some taps: for a 5×5 kernel with padding 1
there are 3 row cases × 3 column cases). See `BroadcastConv`.
"""

from __future__ import annotations

import torch
from torch import nn

from emorl_cli.model.position import fourier_position_grid

OUTPUT_CHANNELS = 4  # RGB + mask logit


# Hidden channels of each kind in the paper (`model.decoder_width` may change them).
DEFAULT_WIDTH = {"small": 32, "iodine": 64, "big": 64, "upsample": 32}
# How much `upsample` shrinks each side of the image for its broadcast grid (two stride-2 doublings).
UPSAMPLE_FACTOR = 4


def hidden_channels(kind: str, channels: int | None = None) -> int:
    """The decoder's hidden width: `channels` (`model.decoder_width`), or the kind's own when None."""
    return channels or DEFAULT_WIDTH.get(kind, 0)


def _layers(kind: str, z_size: int, width: int) -> nn.Sequential:
    if kind == "small":
        return nn.Sequential(
            nn.Conv2d(z_size, width, 5, 1, 1),
            nn.ReLU(),
            nn.Conv2d(width, width, 5, 1, 1),
            nn.ReLU(),
            nn.Conv2d(width, width, 5, 1, 1),
            nn.ReLU(),
            nn.Conv2d(width, OUTPUT_CHANNELS, 3, 1, 1),
        )
    if kind == "iodine":
        return nn.Sequential(
            nn.Conv2d(z_size, width, 3, 1),
            nn.ELU(),
            nn.Conv2d(width, width, 3, 1),
            nn.ELU(),
            nn.Conv2d(width, width, 3, 1),
            nn.ELU(),
            nn.Conv2d(width, width, 3, 1),
            nn.ELU(),
            nn.Conv2d(width, OUTPUT_CHANNELS, 3, 1),
        )
    if kind == "big":
        return nn.Sequential(
            nn.ConvTranspose2d(z_size, width, 5, 2, 2, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width, 5, 2, 2, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width, 5, 2, 2, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width, 5, 2, 2, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width, 5, 1, 2, output_padding=0),
            nn.ReLU(),
            nn.ConvTranspose2d(width, OUTPUT_CHANNELS, 3, 1, 1, output_padding=0),
        )
    if kind == "upsample":
        return nn.Sequential(
            nn.Conv2d(z_size, width, 3, 1, 1),  # [N, w, H/4, W/4]
            nn.ReLU(),
            nn.Conv2d(width, width, 3, 1, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width, 4, 2, 1),  # [N, w, H/2, W/2]
            nn.ReLU(),
            nn.Conv2d(width, width, 3, 1, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width, 4, 2, 1),  # [N, w, H, W]
            nn.ReLU(),
            nn.Conv2d(width, OUTPUT_CHANNELS, 3, 1, 1),  # [N, 4, H, W]
        )
    raise ValueError(f"unknown image decoder {kind!r}; expected 'small', 'iodine', 'big' or 'upsample'")


def grid_size(kind: str, height: int, width: int) -> tuple[int, int]:
    """Side lengths of the broadcast grid that decodes to an H×W image."""
    if kind == "small":
        return height + 6, width + 6
    if kind == "iodine":
        return height + 10, width + 10
    if kind == "big":
        if height % 16 or width % 16:
            raise ValueError(f"the 'big' decoder needs H and W divisible by 16, got {height}x{width}")
        return height // 16, width // 16
    if kind == "upsample":
        if height % UPSAMPLE_FACTOR or width % UPSAMPLE_FACTOR:
            raise ValueError(f"the 'upsample' decoder needs H and W divisible by 4, got {height}x{width}")
        return height // UPSAMPLE_FACTOR, width // UPSAMPLE_FACTOR
    raise ValueError(f"unknown image decoder {kind!r}; expected 'small', 'iodine', 'big' or 'upsample'")


def _border_cases(size: int, kernel: int, padding: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """For a stride-1 convolution over `size` inputs: the distinct ranges [lo, hi) of kernel taps that land
    inside the input, and the output positions as runs (case index, run length), in order."""
    cases: list[tuple[int, int]] = []
    runs: list[tuple[int, int]] = []
    for out in range(size + 2 * padding - kernel + 1):
        taps = (max(0, padding - out), min(kernel, size + padding - out))
        if taps not in cases:
            cases.append(taps)
        case = cases.index(taps)
        if runs and runs[-1][0] == case:
            runs[-1] = (case, runs[-1][1] + 1)
        else:
            runs.append((case, 1))
    return cases, runs


def _spread(per_case: torch.Tensor, runs: list[tuple[int, int]], dim: int) -> torch.Tensor:
    """Repeat each case's slice along `dim` for its run of output positions (expand + cat: one copy)."""
    pieces = []
    for case, length in runs:
        piece = per_case.narrow(dim, case, 1)
        pieces.append(piece.expand(*[length if d == dim else -1 for d in range(per_case.dim())]))
    return torch.cat(pieces, dim=dim)


class BroadcastConv(nn.Module):
    """A stride-1 `nn.Conv2d` applied to (z tiled over a Gh×Gw grid) + P, without tiling z.

    Holds no parameters of its own: it reads the weights of the wrapped convolution at every call.
    """

    def __init__(self, grid_h: int, grid_w: int, conv: nn.Conv2d):
        super().__init__()
        kh, kw = conv.kernel_size
        ph, pw = conv.padding  # type: ignore[misc]
        self.row_cases, self.row_runs = _border_cases(grid_h, kh, ph)
        self.col_cases, self.col_runs = _border_cases(grid_w, kw, pw)

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        return (
            isinstance(conv, nn.Conv2d)
            and conv.stride == (1, 1)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
        )

    def forward(self, conv: nn.Conv2d, z: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """z [N, D], pos [D, Gh, Gw] → conv(z tiled + pos) [N, C_out, Ho, Wo]."""
        n, d = z.shape
        weight = conv.weight  # [C_out, D, kh, kw]
        rows = torch.stack([weight[:, :, lo:hi].sum(2) for lo, hi in self.row_cases], dim=2)  # [C_out, D, R, kw]
        taps = torch.stack([rows[..., lo:hi].sum(3) for lo, hi in self.col_cases], dim=3)  # [C_out, D, R, Cc]
        r, c = taps.shape[2:]
        # Built channels-last ([N, Ho, Wo, C_out] in memory), the layout the next convolutions run fastest in.
        per_case = (z @ taps.permute(1, 2, 3, 0).reshape(d, -1)).view(n, r, c, -1)  # [N, R, Cc, C_out]
        position = conv(pos.unsqueeze(0)).permute(0, 2, 3, 1)  # [1, Ho, Wo, C_out], bias included
        if r == 1 and c == 1:  # no padding: the z part is constant over the image
            return (per_case + position).permute(0, 3, 1, 2)
        spread = _spread(_spread(per_case, self.row_runs, 1), self.col_runs, 2)  # [N, Ho, Wo, C_out]
        return (spread + position).permute(0, 3, 1, 2)  # [N, C_out, Ho, Wo], channels-last strides


def _output_side(layer: nn.Conv2d | nn.ConvTranspose2d, size: int, dim: int) -> int:
    """Output length along `dim` (0 rows, 1 columns) of a convolution over `size` inputs."""
    kernel, stride, padding = layer.kernel_size[dim], layer.stride[dim], layer.padding[dim]  # type: ignore[index]
    if isinstance(layer, nn.ConvTranspose2d):
        return (size - 1) * stride - 2 * padding + kernel + layer.output_padding[dim]
    return (size + 2 * padding - kernel) // stride + 1


class SpatialBroadcastDecoder(nn.Module):
    """z [N, D] → (rgb [N, 3, H, W] in [0, 1], mask_logits [N, H, W]); `channels`: hidden width (None: the
    kind's own, DEFAULT_WIDTH); `position_frequencies`: F sine/cosine octaves added to the four position ramps
    (0: the paper's ramps alone; see `position.fourier_position_grid`)."""

    def __init__(
        self,
        kind: str,
        z_size: int,
        height: int,
        width: int,
        channels: int | None = None,
        position_frequencies: int = 0,
    ):
        super().__init__()
        self.kind = kind
        self.decode = _layers(kind, z_size, hidden_channels(kind, channels))
        self.pos_embed_projection = nn.Linear(4 + 4 * position_frequencies, z_size)
        gh, gw = grid_size(kind, height, width)
        grid = fourier_position_grid(gh, gw, position_frequencies)  # [Gh, Gw, 4 + 4F]
        self.register_buffer("grid", grid, persistent=False)
        first = self.decode[0]
        self.first_layer = BroadcastConv(gh, gw, first) if BroadcastConv.supports(first) else None
        self.use_broadcast_conv = self.first_layer is not None  # False: tile z and run every layer as is

    def hidden_elements(self) -> int:
        """Elements of the largest hidden activation per decoded slot (channels × its grid, over the
        layers): the size of the largest tensors a decode makes, for sizing chunks."""
        h, w = self.grid.shape[:2]
        largest = 0
        for layer in self.decode[:-1]:
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                h, w = _output_side(layer, h, 0), _output_side(layer, w, 1)
                largest = max(largest, layer.out_channels * h * w)
        return largest

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, d = z.shape
        pos = self.pos_embed_projection(self.grid.to(z.dtype)).permute(2, 0, 1)  # [D, Gh, Gw], once per call
        if self.use_broadcast_conv and self.first_layer is not None:
            hidden = self.first_layer(self.decode[0], z, pos)  # [N, C_out, Ho, Wo]
            out = self.decode[1:](hidden)  # [N, 4, H, W]
        else:
            tiled = (z.view(n, d, 1, 1) + pos.unsqueeze(0)).contiguous(memory_format=torch.channels_last)
            out = self.decode(tiled)  # [N, D, Gh, Gw] → [N, 4, H, W]
        out = out.contiguous()  # back to NCHW for the likelihood (a small copy)
        return torch.sigmoid(out[:, :3]), out[:, 3]
