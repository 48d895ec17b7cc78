"""`emorl data import`: a folder of pictures (and, optionally, integer label masks) → one .h5 file emorl reads.

Each image is turned upright (its EXIF orientation), centre-cropped to a square whose side is its shorter
side, and resized to S×S with Pillow's bicubic filter. A label mask (same file stem, in a second folder;
integers, 0 = background) must have the image's size; it gets the same crop and a nearest-neighbour resize,
its non-zero labels are renumbered 1, 2, … in increasing order (so ids like 17 and 203 cost no empty
channels), and it is stored one-hot. The file holds both splits, as the config expects of `data.dataset:
custom` (`data.train_file` and `data.test_file` name the same file):

    {train|test}/
        imgs   [N, S, S, 3]     uint8 0..255
        masks  [N, O, S, S, 1]  uint8 0/255, entity 0 = background, O = 1 + the most objects in one image
        names  [N]              the source file stems, in the order stored (sorted by name)

The test split is a seeded random choice of round(F·N) images (at least one, and one left for training):
the same folder, F and seed always give the same file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
from PIL import Image

from emorl_cli.data.h5 import atomic_h5
from emorl_cli.data.manifest import Manifest, md5_file
from emorl_cli.data.picture_files import open_picture
from emorl_cli.data.progress import NullProgress, Progress
from emorl_cli.data.space import check_disk_space
from emorl_cli.errors import DataError, InputError
from emorl_cli.locks import lock_folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Label masks must be lossless: JPEG would blur the labels at every object's edge.
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
DEFAULT_SIZE = 64
DEFAULT_SPLIT_TEST = 0.1
# Images whose one-hot masks are written at a time.
MASK_CHUNK = 256


@dataclass(frozen=True)
class ImportResult:
    """What `import_folder` wrote.

    Attributes:
        path: the .h5 file.
        image_size: S.
        train_names / test_names: the file stems in each split, in the order stored.
        entities: O (background included), or None when no masks were imported.
        ignored: files in the image folder that are not PNG or JPEG (left out).
    """

    path: Path
    image_size: int
    train_names: list[str]
    test_names: list[str]
    entities: Optional[int]
    ignored: list[str]


# --------------------------------------------------------------------------------------------- listing


def _printable(name: str) -> str:
    """`name` as text: bytes of a file name that are not UTF-8 shown as escapes (\\xff), never raised on."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _files_by_stem(folder: Path, suffixes: Sequence[str], what: str) -> tuple[dict[str, Path], list[str]]:
    """{stem: path} of the non-hidden files in `folder` with one of `suffixes` (any case), and the other names."""
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist or is not a folder; give the folder holding them")
    found: dict[str, Path] = {}
    others: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            others.append(_printable(path.name))
            continue
        if _printable(path.name) != path.name:  # bytes that are not UTF-8 (stored as names in the .h5)
            raise DataError(
                f"the name of {what} {_printable(path.name)} in {_printable(str(folder))} is not UTF-8 text; "
                "rename the file (names are stored in the .h5 as UTF-8)"
            )
        if path.stem in found:
            raise DataError(
                f"{what} {found[path.stem].name} and {path.name} in {folder} have the same name {path.stem!r}; "
                "keep one of them (files are matched by name without the extension)"
            )
        found[path.stem] = path
    return found, others


def _list_masks(folder: Path, image_stems: Sequence[str]) -> dict[str, Path]:
    """{stem: mask path} for every image stem; errors for lossy, missing or orphaned masks."""
    masks, others = _files_by_stem(folder, MASK_SUFFIXES + LOSSY_SUFFIXES, "mask")
    lossy = [p.name for p in masks.values() if p.suffix.lower() in LOSSY_SUFFIXES]
    if lossy:
        raise DataError(
            f"mask {lossy[0]} in {folder} is a JPEG; JPEG blurs the labels at object edges — save label masks "
            "as PNG (grayscale or palette, 0 = background, 1, 2, … = objects)"
        )
    orphans = sorted(set(masks) - set(image_stems))
    if orphans:
        shown = ", ".join(masks[s].name for s in orphans[:3]) + (" …" if len(orphans) > 3 else "")
        raise DataError(
            f"{len(orphans)} mask(s) in {folder} have no image of the same name: {shown}; "
            "remove them or add the images (files are matched by name without the extension)"
        )
    missing = [s for s in image_stems if s not in masks]
    if missing:
        shown = ", ".join(missing[:3]) + (" …" if len(missing) > 3 else "")
        extra = f" (other files there: {', '.join(others[:3])})" if others else ""
        raise DataError(
            f"{len(missing)} image(s) have no mask in {folder}: {shown}{extra}; every image needs a label mask "
            "of the same name (PNG) — or import without --masks"
        )
    return masks


# --------------------------------------------------------------------------------------------- pixels


def _open_upright(path: Path, what: str) -> Image.Image:
    """The picture at `path`, loaded and turned by its EXIF orientation; unreadable or too large files are a
    `DataError` (see `picture_files.open_picture`)."""
    return open_picture(path, what, "replace the file or remove it from the folder", upright=True)


def square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred square whose side is the shorter side."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


def nearest_indices(start: int, length: int, size: int) -> np.ndarray:
    """Source indices of a nearest-neighbour resize of `length` pixels from `start` to `size` pixels: the
    pixel under each output pixel's centre, start + floor((i + 0.5)·length/size)."""
    return start + np.floor((np.arange(size) + 0.5) * length / size).astype(np.int64)


def prepare_image(picture: Image.Image, size: int) -> np.ndarray:
    """Any picture → uint8 [size, size, 3]: RGB, centre square crop, bicubic resize (transparency dropped)."""
    rgb = picture.convert("RGB")
    square = rgb.crop(square_box(*rgb.size))  # cropped first: the filter sees no pixel outside the square
    return np.asarray(square.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def label_array(picture: Image.Image, path: Path) -> np.ndarray:
    """Integer labels [H, W] of a mask picture (grayscale, palette, 16/32-bit, or RGB with equal channels)."""
    mode = picture.mode
    if mode in ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N"):
        labels = np.asarray(picture).astype(np.int64)
    elif mode in ("RGB", "RGBA"):
        rgb = np.asarray(picture)[..., :3].astype(np.int64)
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
            raise DataError(
                f"mask {path} is a colour image (R, G and B differ); save integer labels as a grayscale or "
                "palette PNG (0 = background, 1, 2, … = objects)"
            )
        labels = rgb[..., 0]
    else:
        raise DataError(
            f"mask {path} has image mode {mode!r}, not integer labels; save it as a grayscale, palette or "
            "16-bit PNG (0 = background, 1, 2, … = objects)"
        )
    if labels.size and labels.min() < 0:
        raise DataError(f"mask {path} holds negative labels (min {labels.min()}); use 0 for background, 1, 2, …")
    return labels


def prepare_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Labels [H, W] → uint16 [size, size]: centre square crop, nearest resize, non-zero labels renumbered 1..m
    in increasing order (0 stays background)."""
    h, w = labels.shape
    left, top, right, bottom = square_box(w, h)
    rows = nearest_indices(top, bottom - top, size)
    cols = nearest_indices(left, right - left, size)
    resized = labels[np.ix_(rows, cols)]  # [size, size]
    values, inverse = np.unique(resized, return_inverse=True)
    compact = inverse.reshape(resized.shape) + (0 if values[0] == 0 else 1)
    if compact.max() > np.iinfo(np.uint16).max:
        raise DataError(f"a mask has {int(compact.max())} objects, more than emorl can store; merge some labels")
    return compact.astype(np.uint16)


def one_hot_masks(labels: np.ndarray, entities: int) -> np.ndarray:
    """Labels uint [B, S, S] → uint8 [B, O, S, S, 1] with 255 where the pixel belongs to entity o (O = entities)."""
    hot = labels[:, None, :, :] == np.arange(entities, dtype=labels.dtype)[None, :, None, None]  # [B, O, S, S]
    return (hot.astype(np.uint8) * 255)[..., None]


# --------------------------------------------------------------------------------------------- split


def split_indices(count: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of `count` items, each sorted: a seeded random round(F·N) for test, ≥ 1 each side."""
    if count < 2:
        raise DataError(f"found {count} image; a training and a test split need at least 2 images")
    n_test = min(max(int(round(count * test_fraction)), 1), count - 1)
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def check_options(size: int, test_fraction: float) -> None:
    """Raise an `InputError` for a size ≤ 0 or a test fraction outside (0, 1)."""
    if size <= 0:
        raise InputError(f"--size must be a positive number of pixels, got {size}; e.g. --size 64")
    if not 0.0 < test_fraction < 1.0:
        raise InputError(
            f"--split-test is the share of images kept for testing, strictly between 0 and 1; got {test_fraction} "
            "(e.g. --split-test 0.1)"
        )


# --------------------------------------------------------------------------------------------- import


def import_folder(
    folder: Path,
    out: Path,
    *,
    size: int = DEFAULT_SIZE,
    masks: Optional[Path] = None,
    test_fraction: float = DEFAULT_SPLIT_TEST,
    seed: int = 0,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> ImportResult:
    """Pack the PNG/JPEG images of `folder` (and label masks from `masks`) into `out` (.h5, both splits),
    atomically, and record it in the manifest of `out`'s folder.

    Raises:
        InputError: size ≤ 0, test_fraction outside (0, 1).
        DataError: no images, an unreadable image or mask, a mask without an image or an image without a mask,
            a mask whose size differs from its image's, `out` existing without `force`.
        BusyError: another emorl process holds `out`'s folder (an import, fetch or synth into it).
    """
    progress = progress or NullProgress()
    folder, out = Path(folder), Path(out)
    check_options(size, test_fraction)
    images, ignored = _files_by_stem(folder, IMAGE_SUFFIXES, "image")
    if not images:
        seen = f" (it holds: {', '.join(ignored[:5])}{' …' if len(ignored) > 5 else ''})" if ignored else ""
        raise DataError(
            f"no PNG or JPEG images in {folder}{seen}; give the folder holding your pictures (*.png, *.jpg, *.jpeg)"
        )
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; give the .h5 file to write, e.g. {out / 'custom.h5'}")
    stems = sorted(images)
    mask_paths = _list_masks(Path(masks), stems) if masks is not None else None
    if ignored:
        shown = ", ".join(ignored[:5]) + (" …" if len(ignored) > 5 else "")
        progress.note(f"left out {len(ignored)} file(s) of {folder} that are not PNG or JPEG: {shown}")
    train_idx, test_idx = split_indices(len(stems), test_fraction, seed)
    # S×S×3 bytes per image (the masks, one byte per entity and pixel, come on top)
    check_disk_space(out.parent, len(stems) * size * size * 3, f"{len(stems):,} images of {size}x{size}", "--size")
    # one writer per folder: two imports into one folder would race on its manifest (and on `out`)
    with lock_folder(out.parent, "emorl data import", advice="wait for it to finish, or write into another folder"):
        if out.exists() and not force:
            raise DataError(f"{out} already exists; pass --force to replace it or choose another --out")
        manifest = Manifest.load(out.parent)  # a damaged manifest fails now, before any work
        entities = _write_import(
            out, images, mask_paths, stems, train_idx, test_idx, size, test_fraction, seed, progress
        )
        manifest.record_file(out.name, out.stat().st_size, md5_file(out), f"import:{folder}")
        manifest.save()
    return ImportResult(
        path=out,
        image_size=size,
        train_names=[stems[i] for i in train_idx],
        test_names=[stems[i] for i in test_idx],
        entities=entities,
        ignored=ignored,
    )


def _write_import(
    out: Path,
    images: dict[str, Path],
    mask_paths: Optional[dict[str, Path]],
    stems: list[str],
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    size: int,
    test_fraction: float,
    seed: int,
    progress: Progress,
) -> Optional[int]:
    """Write the images (and one-hot masks) of `stems` into `out` atomically; the number of mask entities
    (background included) or None without masks."""
    labels: Optional[np.ndarray] = None  # uint16 [N, S, S], in `stems` order
    with atomic_h5(out) as handle:
        groups = {"train": train_idx, "test": test_idx}
        datasets = {}
        for split, idx in groups.items():
            group = handle.create_group(split)
            datasets[split] = group.create_dataset("imgs", (len(idx), size, size, 3), dtype=np.uint8)
            group.create_dataset("names", data=[stems[i] for i in idx], dtype=h5py.string_dtype())
        where = {int(i): (split, row) for split, idx in groups.items() for row, i in enumerate(idx)}
        if mask_paths is not None:
            labels = np.zeros((len(stems), size, size), np.uint16)
        progress.start(f"importing {len(stems)} images", len(stems), unit="images")
        try:
            for i, stem in enumerate(stems):
                picture = _open_upright(images[stem], "image")
                split, row = where[i]
                datasets[split][row] = prepare_image(picture, size)
                if mask_paths is not None and labels is not None:
                    mask_picture = _open_upright(mask_paths[stem], "mask")
                    if mask_picture.size != picture.size:
                        (iw, ih), (mw, mh) = picture.size, mask_picture.size
                        raise DataError(
                            f"mask {mask_paths[stem]} is {mw}x{mh} pixels but its image {images[stem].name} is "
                            f"{iw}x{ih}; a mask must have its image's size (width x height)"
                        )
                    labels[i] = prepare_labels(label_array(mask_picture, mask_paths[stem]), size)
                progress.advance(1)
        finally:
            progress.finish()
        entities = None
        if labels is not None:
            entities = int(labels.max()) + 1
            for split, idx in groups.items():
                stored = handle[split].create_dataset("masks", (len(idx), entities, size, size, 1), dtype=np.uint8)
                for start in range(0, len(idx), MASK_CHUNK):
                    stored[start : start + MASK_CHUNK] = one_hot_masks(
                        labels[idx[start : start + MASK_CHUNK]], entities
                    )
            handle.attrs["entities"] = entities
        handle.attrs["written_by"] = "emorl data import"
        handle.attrs["image_size"] = size
        handle.attrs["split_test"] = test_fraction
        handle.attrs["seed"] = seed
    return entities
