"""The image encoder shared by EfficientMORL and Slot Attention (as in the Slot Attention paper).

Four 5×5 convolutions (64 channels, ReLU) keep the H×W resolution; the projected position embedding is
added; the feature map is flattened to H·W tokens and passed through LayerNorm → Linear → ReLU → Linear.
The layers are built here and stored on the model under the original's names (`encoder_pt_1`,
`encoder_pt_2`, `pos_embed_projection`) so the original checkpoints load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from emorl_cli.model.position import position_grid

FEATURES = 64  # encoder width of the original, whatever D is (model.encoder_width)


def conv_stack(in_channels: int = 3, width: int = FEATURES) -> nn.Sequential:
    """4 × (Conv 5×5, stride 1, padding 2, ReLU): [B, 3, H, W] → [B, 64, H, W]."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 5, 1, 2),
        nn.ReLU(),
        nn.Conv2d(width, width, 5, 1, 2),
        nn.ReLU(),
        nn.Conv2d(width, width, 5, 1, 2),
        nn.ReLU(),
        nn.Conv2d(width, width, 5, 1, 2),
        nn.ReLU(),
    )


def token_mlp(width: int = FEATURES) -> nn.Sequential:
    """LayerNorm → Linear → ReLU → Linear applied to each of the H·W tokens."""
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))


def encode_image(images: torch.Tensor, convs: nn.Module, pos_projection: nn.Linear, mlp: nn.Module) -> torch.Tensor:
    """images [B, 3, H, W] in [-1, 1] → tokens [B, H·W, 64] (row-major pixel order).

    Out-of-place addition of the embedding: the original's in-place `+=` on a ReLU output breaks
    backward when the input arrives in channels-last layout.
    """
    b, _, h, w = images.shape
    # channels-last convolutions (faster in oneDNN); the permute below is then a free view
    features = convs(images.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)  # [B, H, W, 64]
    grid = position_grid(h, w, dtype=features.dtype, device=features.device)  # [H, W, 4]
    features = features + pos_projection(grid)  # [B, H, W, 64], embedding projected once, broadcast
    return mlp(features.reshape(b, h * w, -1))  # [B, H*W, 64]
