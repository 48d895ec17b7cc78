"""Contact sheet of a dataset file: the first images, each beside its ground-truth masks overlaid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
from PIL import Image

from emorl_cli.data.h5 import read_layout, reading
from emorl_cli.errors import DataError
from emorl_cli.files import atomic_path, ensure_writable_file

# One colour per mask entity (entity 0, the background, is dark grey).
PALETTE = np.array(
    [
        [60, 60, 60],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
    ],
    dtype=np.float32,
)
ALPHA = 0.6
COLUMNS = 4
GAP = 4


def overlay_masks(img: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """uint8 image [H, W, 3] and masks [O, H, W, 1] (0/255) → the image tinted by each pixel's entity colour."""
    weights = masks[..., 0].astype(np.float32)  # [O, H, W]
    label = weights.argmax(axis=0)  # [H, W]
    covered = weights.max(axis=0) > 0
    colours = PALETTE[label % len(PALETTE)]  # [H, W, 3]
    out = img.astype(np.float32)
    out[covered] = (1 - ALPHA) * out[covered] + ALPHA * colours[covered]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def contact_sheet(path: Path, out: Path, count: int = 16, split: Optional[str] = None) -> Path:
    """Write a PNG grid of the first `count` images of `split` (default: the file's first split), each image
    beside its masks overlaid (colour per entity). Returns the PNG's path."""
    path, out = Path(path), Path(out)
    ensure_writable_file(out, "preview file")
    with reading(path, "previewing") as handle:
        if split is None:
            candidates = [g for g in sorted(handle) if isinstance(handle[g], h5py.Group) and "imgs" in handle[g]]
            if not candidates:
                raise DataError(f"{path} has no group with an 'imgs' dataset; nothing to preview")
            split = candidates[0]
        layout = read_layout(handle, path, split)
        n = min(count, layout.num_images)
        imgs = np.asarray(handle[split]["imgs"][:n])
        masks = np.asarray(handle[split]["masks"][:n]) if layout.mask_entities else None
    imgs = np.clip(imgs, 0, 255).astype(np.uint8)
    h, w = layout.image_hw
    scale = max(1, round(96 / max(h, w)))
    panels = 2 if masks is not None else 1
    cell_w, cell_h = panels * w * scale + (panels - 1) * GAP, h * scale
    cols = min(COLUMNS, n)
    rows = math.ceil(n / cols)
    sheet = Image.new("RGB", (cols * cell_w + (cols + 1) * GAP * 2, rows * cell_h + (rows + 1) * GAP * 2), "white")
    for i in range(n):
        tiles = [imgs[i]] + ([overlay_masks(imgs[i], masks[i])] if masks is not None else [])
        x0 = GAP * 2 + (i % cols) * (cell_w + GAP * 2)
        y0 = GAP * 2 + (i // cols) * (cell_h + GAP * 2)
        for j, tile in enumerate(tiles):
            big = Image.fromarray(tile).resize((w * scale, h * scale), Image.Resampling.NEAREST)
            sheet.paste(big, (x0 + j * (w * scale + GAP), y0))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
