"""Pictures of a model: inference (evaluate/) composed with drawing (viz/), for `emorl viz`, `emorl gifs`
and the demo.

The model contract is that of `emorl_cli.model`; batches are the data layer's dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from emorl_cli.config import Config
from emorl_cli.evaluate.inference import infer_images
from emorl_cli.evaluate.traversals import latent_traversals
from emorl_cli.files import ensure_writable_folder
from emorl_cli.viz.figures import auto_scale
from emorl_cli.viz.gifs import DEFAULT_FPS, write_traversals
from emorl_cli.viz.pages import write_stage_pages

__all__ = ["make_viz", "make_gifs", "gifs_memory_bytes", "check_gifs_memory"]

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


def gifs_memory_bytes(cfg: Config, top_k: int, frames: int) -> int:
    """A lower bound of the memory `make_gifs` holds at once, from the sizes alone (nothing is allocated).

    With K slots, R = min(top_k, D) traversals per slot, T frames of H×W and an upscaling s (cells ≥ 96 px):
    the K·R traversals kept as float32 [T,3,H,W]; the render of one traversal (its [T,K,3,H,W] components and
    masks); and the sheet, a uint8 canvas of K·R rows × T cells of sH×sW, plus its strips.
    """
    k = cfg.model.K
    rows = k * min(top_k, cfg.model.z_size)
    _, h, w = cfg.model.input_size
    s = auto_scale(h)
    kept = 4 * rows * frames * 3 * h * w  # float32 [T,3,H,W] per traversal
    render = 4 * 2 * frames * k * 4 * h * w  # float32 [T,K,3,H,W] components and [T,K,1,H,W] masks, twice
    sheet = 2 * rows * frames * (s * h) * (s * w) * 3  # uint8 canvas + strips
    return kept + render + sheet


def check_gifs_memory(cfg: Config, top_k: int, frames: int, device: torch.device) -> int:
    """Refuse `emorl gifs` sizes whose memory estimate exceeds what `device` has free (before any inference).

    Raises:
        TrainingError: the estimate exceeds the free memory (one line with both numbers and what to lower).
    """
    from emorl_cli.training.memory import refuse_beyond_free

    _, h, w = cfg.model.input_size
    rows = min(top_k, cfg.model.z_size)
    sizes = f"K={cfg.model.K} slots × {rows} traversals of {frames} frames, {h}x{w} images"
    needed = gifs_memory_bytes(cfg, top_k, frames)
    return refuse_beyond_free(needed, device, "drawing the traversals", sizes, "--frames or --top-k")


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
