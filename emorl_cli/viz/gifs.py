"""Latent-traversal GIFs (imageio + Pillow, no ffmpeg) and one PNG sheet of all traversals.

Shape legend: T frames, H×W an image; frames are [T,3,H,W] in [0,1] (numpy or torch).
The original wrote `slot_{k}_row_{r}.gif` — for slot k, the r-th most active latent dimension — at 4 fps with
8 frames, through moviepy and a hard-coded ffmpeg; the names and defaults are kept here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
from PIL import ImageDraw

from emorl_cli.errors import EmorlError
from emorl_cli.files import atomic_path, ensure_writable_folder
from emorl_cli.viz.figures import (
    LABEL_WIDTH,
    GridLayout,
    as_numpy,
    auto_scale,
    draw_label,
    save_png,
    to_uint8_image,
    upscale,
)

__all__ = ["traversal_gif_name", "write_traversal_gif", "write_gif_sheet", "write_traversals"]

DEFAULT_FPS = 4


def traversal_gif_name(slot: int, row: int) -> str:
    """File name of slot `slot`'s traversal of its `row`-th most active latent dimension."""
    return f"slot_{slot}_row_{row}.gif"


def _frames_uint8(frames: Any, scale: int) -> np.ndarray:
    """[T,3,H,W] in [0,1] → uint8 [T,H·s,W·s,3]."""
    a = as_numpy(frames)
    if a.ndim != 4 or a.shape[1] != 3 or a.shape[0] < 1:
        raise EmorlError(f"traversal frames must be [T,3,H,W] with T ≥ 1, got shape {list(a.shape)}")
    return np.stack([upscale(to_uint8_image(frame), scale) for frame in a])


def write_traversal_gif(
    frames: Any, path: str | Path, *, fps: float = DEFAULT_FPS, scale: int | None = None, loop: int = 0
) -> Path:
    """Write an animated GIF of a traversal.

    Args:
        frames: [T,3,H,W] in [0,1].
        path: the .gif to write (atomically).
        fps: frames per second (the original: 4).
        scale: integer pixel upscaling; None picks one that makes frames ≥ 96 px tall.
        loop: GIF loop count, 0 = forever.
    Note: Pillow merges consecutive identical frames into one longer frame, so the file can hold fewer than T
    frames (the animation's length is unchanged) — a dimension the decoder ignores yields a still GIF.
    """
    frames_u8 = _frames_uint8(frames, scale or auto_scale(as_numpy(frames).shape[-2]))
    path = Path(path)
    # encoded in memory first: a full disk then fails one plain write, not the encoder halfway
    encoded = iio.imwrite("<bytes>", frames_u8, extension=".gif", duration=1000.0 / fps, loop=loop)
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded)
    return path


def write_gif_sheet(
    rows: Sequence[Any], path: str | Path, *, labels: Sequence[str] | None = None, scale: int | None = None
) -> Path:
    """One PNG with every traversal: a row per traversal, its frames left to right.

    Args:
        rows: traversals, each [T,3,H,W] in [0,1] (same H×W; rows with fewer frames leave grey cells).
        path: the .png to write (atomically).
        labels: optional row titles (e.g. 'slot 0 · dim 12'), drawn in a left margin.
        scale: integer pixel upscaling; None picks one that makes cells ≥ 96 px tall.
    """
    if not rows:
        raise EmorlError("no traversals to put on the sheet")
    if labels is not None and len(labels) != len(rows):
        raise EmorlError(f"{len(rows)} traversals but {len(labels)} labels; give one label per row")
    height, width = as_numpy(rows[0]).shape[-2:]
    s = scale or auto_scale(height)
    strips = [_frames_uint8(r, s) for r in rows]
    if any(strip.shape[1:3] != strips[0].shape[1:3] for strip in strips):
        raise EmorlError("traversals on one sheet must share one image size")
    layout = GridLayout(
        rows=len(strips),
        cols=max(strip.shape[0] for strip in strips),
        cell_h=height * s,
        cell_w=width * s,
        left=LABEL_WIDTH if labels is not None else 0,
    )
    canvas = layout.new_canvas()
    draw = ImageDraw.Draw(canvas)
    for r, strip in enumerate(strips):
        if labels is not None:
            _, y = layout.origin(r, 0)
            draw_label(draw, (4, y + 2), str(labels[r]), layout.left - 6)
        for c in range(layout.cols):
            layout.paste(canvas, r, c, strip[c] if c < strip.shape[0] else None)
    return save_png(canvas, path)


def write_traversals(
    traversals: Sequence[Any], out_dir: str | Path, *, fps: float = DEFAULT_FPS, scale: int | None = None
) -> tuple[list[Path], Path]:
    """`slot_{k}_row_{r}.gif` for every traversal and all of them on one sheet, `traversals.png`.

    Args:
        traversals: objects with `slot` k, `rank` r, `label` and `frames` [T,3,H,W] in [0,1]
            (`emorl_cli.evaluate.traversals.Traversal`), in the order of the sheet's rows.
        out_dir: the folder to write into.
    Returns:
        (the GIF paths in order, the sheet's path).
    """
    out_dir = ensure_writable_folder(out_dir, "output folder")
    gifs = [
        write_traversal_gif(t.frames, out_dir / traversal_gif_name(t.slot, t.rank), fps=fps, scale=scale)
        for t in traversals
    ]
    sheet = write_gif_sheet(
        [t.frames for t in traversals], out_dir / "traversals.png", labels=[t.label for t in traversals], scale=scale
    )
    return gifs, sheet
