"""Arrays in, pictures out: the per-stage figure of inputs, reconstructions, masks, components and attention.

Shape legend: K slots, C = 3 colour channels, H×W an image, T frames. Every array may be a numpy array or a
torch tensor; values are in [0, 1] (clipped), colour images are channels-first [3,H,W].

A figure is a grid of equal cells, pixels upscaled by an integer factor (nearest neighbour) so that 35×35
images stay readable, with a header for column titles and a left margin for row titles (PIL's default font).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from emorl_cli.errors import EmorlError
from emorl_cli.files import atomic_path

__all__ = [
    "GridLayout",
    "as_numpy",
    "draw_label",
    "auto_scale",
    "to_uint8_image",
    "upscale",
    "component_images",
    "render_stage_figure",
    "stage_figure_layout",
    "save_png",
]

BACKGROUND = (228, 228, 228)  # light grey: white components stay visible
EMPTY_CELL = (190, 190, 190)  # a stage without attention
TEXT = (20, 20, 20)
LINE_HEIGHT = 13  # px per line of PIL's default font, with a little air
MIN_CELL = 96  # auto_scale makes cells at least this many pixels tall
LABEL_WIDTH = 72  # left margin for row titles


def auto_scale(height: int) -> int:
    """Integer upscaling factor that makes an image of this height at least MIN_CELL pixels tall."""
    return max(1, math.ceil(MIN_CELL / max(height, 1)))


def as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor
        array = array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def to_uint8_image(array: Any) -> np.ndarray:
    """[3,H,W] colour or [H,W] / [1,H,W] grey, in [0,1] → uint8 [H,W,3]."""
    a = as_numpy(array)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = np.repeat(a[None], 3, axis=0)
    if a.ndim != 3 or a.shape[0] != 3:
        raise EmorlError(f"expected an image [3,H,W] or [H,W] with values in [0,1], got shape {list(a.shape)}")
    a = np.nan_to_num(a, nan=0.0)
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour integer upscaling of [H,W,3]."""
    return image if scale == 1 else image.repeat(scale, axis=0).repeat(scale, axis=1)


def component_images(masks: Any, means: Any) -> np.ndarray:
    """Each slot's component over white: mask·means + (1 − mask)·1.

    Args:
        masks: [K,H,W] or [K,1,H,W] mask probabilities.
        means: [K,3,H,W] per-slot colour means.
    Returns:
        [K,3,H,W] float32.
    """
    m = as_numpy(masks)
    if m.ndim == 4:
        m = m[:, 0]
    mu = as_numpy(means)
    if mu.ndim != 4 or m.shape != (mu.shape[0], *mu.shape[2:]):
        raise EmorlError(f"masks {list(m.shape)} and means {list(mu.shape)} must be [K,H,W] and [K,3,H,W]")
    m = m[:, None]  # [K,1,H,W]
    return m * mu + (1.0 - m) * 1.0


@dataclass(frozen=True)
class GridLayout:
    """Where the cells of a rows × cols picture grid sit, below a header and right of a label margin."""

    rows: int
    cols: int
    cell_h: int
    cell_w: int
    pad: int = 2
    left: int = 0  # label margin
    top: int = 0  # header height

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole picture."""
        return (
            self.left + self.cols * (self.cell_w + self.pad) + self.pad,
            self.top + self.rows * (self.cell_h + self.pad) + self.pad,
        )

    def origin(self, row: int, col: int) -> tuple[int, int]:
        """(x, y) of a cell's top-left pixel."""
        x = self.left + self.pad + col * (self.cell_w + self.pad)
        y = self.top + self.pad + row * (self.cell_h + self.pad)
        return x, y

    def new_canvas(self) -> Image.Image:
        return Image.new("RGB", self.size, BACKGROUND)

    def paste(self, canvas: Image.Image, row: int, col: int, image: np.ndarray | None) -> None:
        """Paste an upscaled uint8 [cell_h, cell_w, 3] image, or an empty grey cell for None."""
        x, y = self.origin(row, col)
        if image is None:
            canvas.paste(EMPTY_CELL, (x, y, x + self.cell_w, y + self.cell_h))
        else:
            canvas.paste(Image.fromarray(image), (x, y))


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def draw_label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, max_width: int) -> None:
    """Draw text, shortened with '…' to fit max_width pixels."""
    font = _font()
    while text and draw.textlength(text, font=font) > max_width:
        text = text[:-2] + "…" if len(text) > 1 else ""
    draw.text(xy, text, fill=TEXT, font=font)


def stage_figure_layout(
    height: int, width: int, num_slots: int, num_stages: int, *, attention: bool, scale: int | None = None
) -> GridLayout:
    """Grid of a stage figure: columns input, reconstruction, then per slot mask, component (and attention)."""
    scale = scale or auto_scale(height)
    per_slot = 3 if attention else 2
    return GridLayout(
        rows=num_stages,
        cols=2 + num_slots * per_slot,
        cell_h=height * scale,
        cell_w=width * scale,
        left=LABEL_WIDTH,
        top=2 * LINE_HEIGHT + 4,
    )


def render_stage_figure(
    image: Any, stages: Sequence[Mapping[str, Any]], *, scale: int | None = None, title: str | None = None
) -> Image.Image:
    """One image's figure: a row per inference stage (the L stochastic layers, then the I refinement steps).

    Args:
        image: the input [3,H,W] in [0,1].
        stages: one mapping per row with `name` (row title), `reconstruction` [3,H,W], `masks` [K,H,W]
            (or [K,1,H,W]), `means` [K,3,H,W], and `attention` [K,H,W] or None (no attention at that stage).
        scale: integer pixel upscaling; None picks one that makes cells ≥ 96 px tall.
        title: optional text drawn in the top-left corner (e.g. the image index).
    Returns:
        The figure (RGB). Columns: input, reconstruction, then for each slot k: mask k, component k
        (mask·means + (1 − mask) over white) and, when any stage has one, attention k.
    """
    if not stages:
        raise EmorlError("no inference stages to draw; the model returned an empty trace")
    height, width = as_numpy(image).shape[-2:]
    k = as_numpy(stages[0]["masks"]).shape[0]
    attention = any(stage.get("attention") is not None for stage in stages)
    layout = stage_figure_layout(height, width, k, len(stages), attention=attention, scale=scale)
    s = layout.cell_h // height
    canvas = layout.new_canvas()
    draw = ImageDraw.Draw(canvas)
    per_slot = 3 if attention else 2
    headers = ["input", "recon."] + [name for _ in range(k) for name in ("mask", "component", "attention")[:per_slot]]
    for col, name in enumerate(headers):
        x, _ = layout.origin(0, col)
        if col >= 2 and (col - 2) % per_slot == 0:
            draw_label(draw, (x, 2), f"slot {(col - 2) // per_slot}", per_slot * layout.cell_w)
        draw_label(draw, (x, 2 + LINE_HEIGHT), name, layout.cell_w)
    if title:
        draw_label(draw, (2, 2), title, layout.left - 4)
    picture = upscale(to_uint8_image(image), s)
    for row, stage in enumerate(stages):
        _, y = layout.origin(row, 0)
        draw_label(draw, (4, y + 2), str(stage.get("name", f"stage {row}")), layout.left - 6)
        masks = as_numpy(stage["masks"]).reshape(k, height, width)
        components = component_images(masks, stage["means"])
        attn = stage.get("attention")
        attn = None if attn is None else as_numpy(attn).reshape(k, height, width)
        layout.paste(canvas, row, 0, picture)
        layout.paste(canvas, row, 1, upscale(to_uint8_image(stage["reconstruction"]), s))
        for slot in range(k):
            col = 2 + slot * per_slot
            layout.paste(canvas, row, col, upscale(to_uint8_image(masks[slot]), s))
            layout.paste(canvas, row, col + 1, upscale(to_uint8_image(components[slot]), s))
            if attention:
                cell = None if attn is None else upscale(to_uint8_image(attn[slot]), s)
                layout.paste(canvas, row, col + 2, cell)
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG atomically (nothing half-written under the final name)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
