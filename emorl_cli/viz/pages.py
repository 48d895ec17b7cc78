"""The `emorl viz` folder: a stage figure per image (`image_{index}.png`), an index.html with each image's
metrics, and `viz.npz` with every array drawn.

Records in, files out; the records come from `emorl_cli.evaluate.inference.infer_images` (any object with
`index`, `image` [C,H,W] in [0,1], `stages`, `metrics` and `arrays` will do).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import numpy as np

from emorl_cli.errors import EmorlError
from emorl_cli.files import atomic_path, ensure_writable_folder
from emorl_cli.viz.figures import render_stage_figure, save_png
from emorl_cli.viz.html import write_index_html

__all__ = ["METRIC_LABELS", "write_stage_pages"]

# How the evaluation figures are named on pages and in tables (`emorl eval` prints them too)
METRIC_LABELS = {
    "fg_ari": "FG-ARI",
    "ari": "ARI",
    "mse": "MSE",
    "kl": "KL",
    "nll": "NLL",
    "miou": "mIoU",
    "slot_spread": "slot spread",
}


def write_stage_pages(
    records: Iterable[Any],
    out_dir: str | Path,
    *,
    scale: Optional[int] = None,
    embed_images: bool = False,
    title: str = "emorl: inference stages",
) -> Path:
    """Draw each record as `image_{index}.png` (a row per inference stage), then write `viz.npz` (the records'
    arrays stacked image by image) and index.html. The folder is checked before the first record is taken,
    so a lazy iterator of records runs no inference for a folder that cannot be written.

    Returns the path of index.html.
    """
    out_dir = ensure_writable_folder(out_dir, "output folder")
    entries = []
    arrays: dict[str, list[np.ndarray]] = {}
    for record in records:
        figure = render_stage_figure(record.image, record.stages, scale=scale, title=f"#{record.index}")
        png = f"image_{record.index}.png"
        save_png(figure, out_dir / png)
        metrics = {METRIC_LABELS.get(name, name): value for name, value in record.metrics.items()}
        entries.append({"png": png, "title": f"test image {record.index}", "metrics": metrics})
        for name, array in record.arrays.items():
            arrays.setdefault(name, []).append(array)
    if not entries:
        raise EmorlError("no images to draw; check the split and num_images")
    with atomic_path(out_dir / "viz.npz") as tmp, tmp.open("wb") as handle:
        np.savez_compressed(handle, **{name: np.stack(parts) for name, parts in arrays.items()})
    return write_index_html(out_dir, entries, title=title, embed_images=embed_images)
