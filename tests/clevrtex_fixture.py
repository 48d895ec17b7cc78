"""A small ClevrTex-layout fixture written by the tests themselves (no download).

`write_variant` writes `ROOT/clevrtex_{variant}/{n // per_folder}/CLEVRTEX_{variant}_{n:06d}.png` (240×320 RGBA),
`…_flat.png` (a one-channel label mask: 0 background, 1..k objects), `….json` (scene metadata in the
published schema) and an auxiliary render `…_depth_0001.png` the reader must ignore, as the published
archives hold them. `pack_archives` turns variant folders into the `.tar.gz` files the host publishes.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

HEIGHT, WIDTH = 240, 320
SHAPES = ("cube", "sphere", "cylinder", "monkey")


def scene(rng: np.random.Generator, max_objects: int = 10) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One image uint8 [240, 320, 4] and its label map uint8 [240, 320]: rectangles and discs on a noisy floor."""
    image = rng.integers(40, 90, size=(HEIGHT, WIDTH, 3)).astype(np.uint8)
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    objects = []
    for index in range(1, int(rng.integers(3, max_objects + 1)) + 1):
        cy, cx = int(rng.integers(30, HEIGHT - 30)), int(rng.integers(70, WIDTH - 70))
        r = int(rng.integers(8, 28))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if shape == "sphere":
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            inside = (abs(yy - cy) <= r) & (abs(xx - cx) <= int(r * 1.3))
        image[inside] = rng.integers(0, 256, size=3).astype(np.uint8)
        labels[inside] = index  # later objects occlude earlier ones
        objects.append({"index": index, "shape": shape, "material": "Rubber", "size": "small", "rotation": 0.0})
    alpha = np.full((HEIGHT, WIDTH, 1), 255, np.uint8)
    return np.concatenate([image, alpha], axis=-1), labels, objects


def write_variant(
    root: Path, variant: str, count: int, *, per_folder: int = 4, seed: int = 0, mask_mode: str = "P"
) -> Path:
    """Write `count` ClevrTex samples of `variant` under `root/clevrtex_{variant}/`; returns that folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / f"clevrtex_{variant}"
    for n in range(count):
        sub = folder / str(n // per_folder)
        sub.mkdir(parents=True, exist_ok=True)
        stem = f"CLEVRTEX_{variant}_{n:06d}"
        image, labels, objects = scene(rng)
        Image.fromarray(image, "RGBA").save(sub / f"{stem}.png")
        mask = Image.fromarray(labels, "L")
        if mask_mode == "P":
            mask = mask.convert("P")  # palette indices are the labels
            mask.putpalette([c for i in range(256) for c in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
        mask.save(sub / f"{stem}_flat.png")
        Image.fromarray(rng.integers(0, 256, size=(HEIGHT, WIDTH)).astype(np.uint8), "L").save(
            sub / f"{stem}_depth_0001.png"
        )
        meta = {"image_index": n, "num_objects": len(objects), "ground_material": "Concrete", "objects": objects}
        (sub / f"{stem}.json").write_text(json.dumps(meta))
    return folder


def read_labels(folder: Path, variant: str, n: int) -> np.ndarray:
    """The stored label map [240, 320] of sample `n` (as written)."""
    path = next(Path(folder).glob(f"**/CLEVRTEX_{variant}_{n:06d}_flat.png"))
    return np.asarray(Image.open(path))


def tar_gz(root: Path, paths: list[Path]) -> bytes:
    """A .tar.gz holding `paths` (files and folders) under their names relative to `root`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in paths:
            archive.add(path, arcname=path.relative_to(root).as_posix())
    return buffer.getvalue()


def pack_archives(root: Path, variant: str, parts: int = 1) -> dict[str, bytes]:
    """The published archives of a variant folder: `clevrtex_{variant}.tar.gz`, or for full five
    `clevrtex_full_partN.tar.gz` that each hold some of its numbered subfolders."""
    folder = Path(root) / f"clevrtex_{variant}"
    subs = sorted(folder.iterdir(), key=lambda p: int(p.name))
    if parts == 1:
        return {f"clevrtex_{variant}.tar.gz": tar_gz(root, [folder])}
    groups = [subs[i::parts] for i in range(parts)]
    return {f"clevrtex_{variant}_part{i + 1}.tar.gz": tar_gz(root, group) for i, group in enumerate(groups)}
