"""Pictures of a segmentation: a label PNG in a fixed palette, an overlay, one RGBA PNG per slot.

Shape legend: K slots, S×S the side the model sees. Arrays in, PNG files out (written atomically); nothing
here runs a model.

The palette is fixed — slot k has the same colour in every picture, run and model — and is stored in the
label PNG itself (a palette PNG whose pixel values are the slot indices: reading it back gives the label map).
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

from emorl_cli.files import atomic_path

MAX_SLOTS = 64
OVERLAY_ALPHA = 0.5  # share of the slot's colour in the overlay
# PNG compression: level 1 is several times faster than the default and only slightly larger
PNG_OPTIONS = {"format": "PNG", "compress_level": 1}

# The first colours are the 10 of Tableau's palette (distinct, colour-blind aware), the rest evenly spaced
# hues at the golden angle, so that K up to 64 slots each get their own colour.
_TABLEAU = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def _palette() -> np.ndarray:
    colours = list(_TABLEAU)
    hue = 0.0
    while len(colours) < MAX_SLOTS:
        hue = (hue + 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.65 if len(colours) % 2 else 0.9, 0.95)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return np.asarray(colours, dtype=np.uint8)  # [64, 3]


PALETTE = _palette()


def _save(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, **PNG_OPTIONS)


def label_image(labels: np.ndarray) -> Image.Image:
    """Label map uint8 [S, S] (slot indices) → a palette PNG image whose pixel values are the slot indices."""
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
    image.putpalette(PALETTE.reshape(-1).tolist())
    return image


def overlay_image(image: np.ndarray, labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The picture uint8 [S, S, 3] with each pixel tinted by its slot's colour (labels uint8 [S, S])."""
    colours = PALETTE[labels].astype(np.float32)  # [S, S, 3]
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), mode="RGB")


def slot_image(component: np.ndarray, mask: np.ndarray) -> Image.Image:
    """One slot as RGBA: its component [3, S, S] in [0, 1] as colour, its mask [S, S] in [0, 1] as alpha."""
    rgb = np.clip(np.rint(component.transpose(1, 2, 0) * 255.0), 0, 255)  # [S, S, 3]
    alpha = np.clip(np.rint(mask * 255.0), 0, 255)[..., None]  # [S, S, 1]
    return Image.fromarray(np.concatenate([rgb, alpha], axis=-1).astype(np.uint8), mode="RGBA")


def write_segment_pictures(
    out: Path, name: str, image: np.ndarray, labels: np.ndarray, masks: np.ndarray, components: np.ndarray
) -> list[Path]:
    """One picture's files: labels/NAME.png, overlays/NAME.png and slots/NAME/slot_KK.png (K of them).

    Args:
        image: uint8 [S, S, 3] the picture the model saw; labels: uint8 [S, S]; masks: [K, S, S] in [0, 1];
            components: [K, 3, S, S] in [0, 1].
    Returns:
        the paths written.
    """
    paths = [out / "labels" / f"{name}.png", out / "overlays" / f"{name}.png"]
    _save(label_image(labels), paths[0])
    _save(overlay_image(image, labels), paths[1])
    for k in range(masks.shape[0]):
        path = out / "slots" / name / f"slot_{k:02d}.png"
        _save(slot_image(components[k], masks[k]), path)
        paths.append(path)
    return paths
