"""The TensorBoard picture of a training run: inference stages of a few images (`emorl viz` layout)."""

from __future__ import annotations

import numpy as np
import torch

from emorl_cli.config import Config
from emorl_cli.evaluate.inference import stages_of_image
from emorl_cli.viz.figures import render_stage_figure


def training_figure(model: torch.nn.Module, images: torch.Tensor, cfg: Config) -> np.ndarray:
    """uint8 [H, W, 3]: one stage figure per image, stacked vertically. images [B, 3, H, W] in [-1, 1]."""
    kwargs = {"refinement_iters": cfg.model.refinement_iters} if cfg.model.kind == "emorl" else {}
    out = model(images, None, record=True, **kwargs)
    figures = [
        np.asarray(render_stage_figure((images[b] + 1) / 2, stages_of_image(out.trace, b), scale=2))
        for b in range(images.shape[0])
    ]
    return np.concatenate(figures, axis=0)
