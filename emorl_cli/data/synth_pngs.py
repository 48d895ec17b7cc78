"""`emorl data synth NAME --png`: the synthetic set as picture files, the input `emorl data import` takes.

Writes OUT/images/NNNNN.png (RGB) and OUT/labels/NNNNN.png (8-bit integer labels: 0 the background, 1… the
objects in the generator's order), so the import path (`emorl data import OUT/images --masks OUT/labels`)
can be tried, and measured, on data whose right answer is known. Both folders are written under a temporary
name beside them and renamed into place when complete: an interrupted run leaves no half folder (its staging
folder is removed by the next run). The folder lock of `emorl data synth` is held throughout, so two runs on
one --out cannot mix their pictures.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Optional

import numpy as np
from PIL import Image

from emorl_cli.data.progress import NullProgress, Progress
from emorl_cli.data.space import check_disk_space
from emorl_cli.data.synth import generator_module, split_rng
from emorl_cli.errors import DataError
from emorl_cli.files import refuse_links
from emorl_cli.locks import lock_folder

PNG_FOLDERS = ("images", "labels")
STAGING_PREFIX = ".synth-png-"


def label_maps(masks: np.ndarray) -> np.ndarray:
    """Integer labels [N, H, W] (uint8) from one-hot masks [N, O, H, W, 1]: the entity each pixel belongs to."""
    return masks[..., 0].argmax(axis=1).astype(np.uint8)  # [N, H, W]


def write_png_folders(
    name: str, out_dir: Path, n: int, seed: int = 0, *, force: bool = False, progress: Optional[Progress] = None
) -> dict[str, Path]:
    """Write `n` images of synthetic `name` (the train split's images for `seed`) and their label PNGs.

    Returns {"images": folder, "labels": folder}. Raises DataError when a folder exists (without `force`)
    or cannot be written.
    """
    gen = generator_module(name)
    if n <= 0:
        raise DataError(f"--png writes the --train images; --train must be positive, got {n}")
    out_dir = Path(out_dir)
    targets = {part: out_dir / part for part in PNG_FOLDERS}
    for part in PNG_FOLDERS:
        refuse_links(out_dir, part)
    # uncompressed bytes of the pictures and labels: an upper bound of what the PNGs take
    shape = gen.layout(1)["imgs"][0]  # (1, H, W, 3)
    check_disk_space(out_dir, n * shape[1] * shape[2] * 4, f"{n:,} pictures and labels", "--train")
    with lock_folder(out_dir, "emorl data synth", advice="wait for it to finish, or write into another --out"):
        for target in targets.values():
            if target.exists() and not force:
                raise DataError(f"{target} already exists; pass --force to replace it or choose another --out")
        _remove_stale_staging(out_dir)  # the lock is ours: any staging folder is an interrupted run's
        _write_folders(gen, name, out_dir, targets, n, seed, progress or NullProgress())
    return targets


def _remove_stale_staging(out_dir: Path) -> None:
    for leftover in out_dir.glob(f"{STAGING_PREFIX}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


def _write_folders(
    gen: ModuleType, name: str, out_dir: Path, targets: dict[str, Path], n: int, seed: int, progress: Progress
) -> None:
    """Write the pictures into a staging folder, then rename its two folders over `targets`."""
    width = max(5, len(str(n - 1)))
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    except OSError as exc:
        raise DataError(f"cannot write into {out_dir} ({exc}); check the path and its permissions") from None
    try:
        for part in PNG_FOLDERS:
            (staging / part).mkdir()
        rng = split_rng(seed, "train")
        progress.start(f"{name} pictures", n, unit="images")
        for start in range(0, n, gen.CHUNK):
            chunk = gen.generate(min(gen.CHUNK, n - start), rng)
            labels = label_maps(chunk["masks"])
            for i, (image, label) in enumerate(zip(chunk["imgs"], labels, strict=True)):
                stem = f"{start + i:0{width}d}.png"
                Image.fromarray(image, "RGB").save(staging / "images" / stem)
                Image.fromarray(label, "L").save(staging / "labels" / stem)
            progress.advance(len(labels))
        progress.finish()
        for part, target in targets.items():
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / part, target)
    except OSError as exc:
        raise DataError(f"cannot write the pictures into {out_dir} ({exc}); check free space and permissions") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
