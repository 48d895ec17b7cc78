"""Pictures of a model: inference (evaluate/) composed with drawing (viz/), for `emorl viz`, `emorl gifs`
and the demo.

The model contract is that of `emorl_cli.model`; batches are the data layer's dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from emorl_cli.evaluate.inference import infer_images
from emorl_cli.evaluate.traversals import latent_traversals
from emorl_cli.files import ensure_writable_folder
from emorl_cli.viz.gifs import DEFAULT_FPS, write_traversals
from emorl_cli.viz.pages import write_stage_pages

__all__ = ["make_viz", "make_gifs"]

Batch = Mapping[str, Any]


def make_viz(
    model: torch.nn.Module,
    objective: Any,
    batches: Iterable[Batch],
    out_dir: str | Path,
    *,
    scale: Optional[int] = None,
    embed_images: bool = False,
    **inference: Any,
) -> Path:
    """Write `image_{index}.png` (a row per inference stage) for each image, an index.html with metrics, and
    `viz.npz` with the arrays drawn (images, index, true masks, and per stage means/masks/attention).

    `inference`: the options of `infer_images` (refinement_iters, num_images, upsample_mode, progress).
    Per-image metrics: FG-ARI and ARI (when the batches carry masks), MSE, and KL and NLL when the model has
    them. The output folder is checked before any image is inferred. Returns the path of index.html.
    """
    records = infer_images(model, objective, batches, **inference)
    return write_stage_pages(records, out_dir, scale=scale, embed_images=embed_images)


def make_gifs(
    model: torch.nn.Module,
    objective: Any,
    batches: Iterable[Batch],
    out_dir: str | Path,
    *,
    scale: Optional[int] = None,
    fps: float = DEFAULT_FPS,
    **traversal: Any,
) -> dict[str, Any]:
    """Latent-traversal GIFs of the first image, as the original's make_gifs: per slot k and its r-th most
    active dimension, `slot_{k}_row_{r}.gif`; all of them on one sheet, `traversals.png`.

    `traversal`: the options of `latent_traversals` (refinement_iters, num_images, top_k, frames,
    activeness_steps, seed). The output folder is checked before the minutes of inference.
    Returns: {"gifs": [paths], "sheet": path, "dims": [top dims], "activeness": [D] mean scores,
    "ranges": ([D] mins, [D] maxs)}.
    """
    out_dir = ensure_writable_folder(out_dir, "output folder")
    result = latent_traversals(model, objective, batches, **traversal)
    gifs, sheet = write_traversals(result.traversals, out_dir, fps=fps, scale=scale)
    return {
        "gifs": gifs,
        "sheet": sheet,
        "dims": result.dims,
        "activeness": result.activeness.tolist(),
        "ranges": (result.ranges[0].cpu().tolist(), result.ranges[1].cpu().tolist()),
    }
