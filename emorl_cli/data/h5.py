"""Opening, validating, describing and atomically writing .h5 dataset files.

Layout (the Zenodo files' and `emorl data synth`'s):

    {train|test}/
        imgs     [N, H, W, 3]     0..255 (uint8 in every file seen so far)
        masks    [N, O, H, W, 1]  0 or 255; entity 0 is the background
        factors  [N, O, F]        per-entity ground-truth factors (optional)

Every problem becomes a `DataError` that names the file and says how to get a good one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import h5py
import numpy as np

from emorl_cli.data.registry import dataset_for_file
from emorl_cli.errors import DataError
from emorl_cli.files import WRITE_ERRNOS, atomic_path, write_error

# How many samples `check_mask_values` and `describe_file` read when they cannot afford the whole file.
SAMPLE_CHECK = 256


def get_hint(path: Path) -> str:
    """What to run to get `path`: the fetch/synth commands, naming the dataset when the file name is known."""
    spec = dataset_for_file(path.name)
    folder = path.parent if str(path.parent) else Path(".")
    if spec is not None and spec.synthesizable:
        return (
            f"get it with `emorl data fetch --zenodo --dest {folder}` or make a synthetic stand-in with "
            f"`emorl data synth {spec.name} --out {folder}`"
        )
    if spec is not None:
        return f"get it with `emorl data fetch --zenodo --dest {folder}`"
    return (
        "get the dataset with `emorl data fetch --zenodo`, make one with `emorl data synth`, or pack your own "
        "pictures with `emorl data import DIR --out FILE.h5`"
    )


def require_file(path: Path) -> None:
    """Raise a `DataError` with fetch/synth instructions when `path` is not an existing file."""
    if path.is_dir():
        raise DataError(f"dataset path {path} is a folder, not an .h5 file; give the file itself")
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist; {get_hint(path)}")


_TRUNCATED = re.compile(r"truncated file: eof = (\d+).*stored_eof = (\d+)")


def _open_error(path: Path, exc: OSError) -> DataError:
    text = str(exc)
    match = _TRUNCATED.search(text)
    if match:
        have, want = int(match.group(1)), int(match.group(2))
        return DataError(
            f"{path} is truncated ({have:,} of {want:,} bytes); the download or copy was cut off — "
            f"delete it and {get_hint(path)}"
        )
    if "signature not found" in text:
        return DataError(f"{path} is not an HDF5 file (no HDF5 signature); delete it and {get_hint(path)}")
    if isinstance(exc, PermissionError) or "ermission denied" in text:
        return DataError(f"cannot read {path}: permission denied; fix the file's permissions")
    return DataError(f"cannot open {path} as HDF5 ({text}); delete it and {get_hint(path)}")


def open_h5(path: Path) -> h5py.File:
    """Open an .h5 file read-only, turning every failure into a `DataError` naming the file; a file that
    reads data from other files (see `check_self_contained`) is refused."""
    path = Path(path)
    require_file(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        check_self_contained(handle, path)
    except BaseException:
        handle.close()
        raise
    return handle


def check_self_contained(handle: h5py.File, path: Path) -> None:
    """Refuse a file whose data lives in other files: an external link, a virtual dataset mapping another
    file (HDF5 reads a missing one as zeros, without a word), or a dataset stored in external raw files.

    Raises:
        DataError: one line naming the file, the object and the file it points at.
    """
    found: list[str] = []

    def visit(name: str, link: Any) -> None:
        if found:
            return
        if isinstance(link, h5py.ExternalLink):
            found.append(f"'{name}' is an external link to {link.filename}:{link.path}")
            return
        if not isinstance(link, h5py.HardLink):
            return
        try:
            obj = handle[name]
        except (KeyError, OSError):
            return
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.is_virtual:
            others = sorted({src.file_name for src in obj.virtual_sources() if src.file_name != "."})
            if others:
                found.append(f"'{name}' is a virtual dataset reading {', '.join(others)}")
        elif obj.external:
            found.append(f"'{name}' is stored in external files ({', '.join(str(e[0]) for e in obj.external)})")

    try:
        handle.visititems_links(visit)
    except (OSError, RuntimeError) as exc:
        raise DataError(f"cannot list the contents of {path} ({exc}); the file is probably damaged") from None
    if found:
        raise DataError(
            f"{path} reads data from other files ({found[0]}); emorl reads only self-contained .h5 files — "
            "copy the data into the file (h5repack, or `emorl data import`) and use that"
        )


@contextmanager
def reading(path: Path, what: str = "reading") -> Iterator[h5py.File]:
    """`with reading(path) as f:` — open read-only; an I/O error while reading becomes a `DataError`."""
    handle = open_h5(path)
    try:
        yield handle
    except OSError as exc:
        raise DataError(
            f"error while {what} {path} ({exc}); the file is probably damaged — delete it and {get_hint(path)}"
        ) from None
    finally:
        handle.close()


# --------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class SplitLayout:
    """Shapes and dtypes of one split of a file, after validation.

    Attributes:
        path, split: where it lives (`split` is the HDF5 group name).
        num_images: N.
        image_hw: (H, W) as stored.
        imgs_dtype: dtype of `imgs`.
        mask_entities: O, or None when the split has no masks.
        factor_dims: F, or None when the split has no factors.
    """

    path: Path
    split: str
    num_images: int
    image_hw: tuple[int, int]
    imgs_dtype: np.dtype
    mask_entities: Optional[int]
    factor_dims: Optional[int]


def _group_names(handle: h5py.File) -> list[str]:
    return sorted(name for name, obj in handle.items() if isinstance(obj, h5py.Group))


def read_layout(
    handle: h5py.File, path: Path, split: str, *, need_masks: bool = False, need_factors: bool = False
) -> SplitLayout:
    """Validate the `split` group's datasets (presence, rank, agreeing sizes, non-empty) and describe them."""
    if split not in handle or not isinstance(handle[split], h5py.Group):
        groups = _group_names(handle)
        others = ", ".join(groups) if groups else "none"
        spec = dataset_for_file(path.name)
        tip = (
            f"the '{split}' split of {spec.name} is in {spec.file_for(split)}"
            if spec is not None and spec.file_for(split) != path.name
            else f"use a file holding a '{split}' group"
        )
        raise DataError(f"{path} has no group '{split}' (groups: {others}); {tip}")
    group = handle[split]
    if "imgs" not in group or not isinstance(group["imgs"], h5py.Dataset):
        raise DataError(
            f"{path} has no dataset '{split}/imgs' (it holds: {', '.join(sorted(group)) or 'nothing'}); "
            f"the file is not in the EfficientMORL layout — {get_hint(path)}"
        )
    imgs = group["imgs"]
    if imgs.ndim != 4 or imgs.shape[-1] != 3:
        raise DataError(
            f"{path}: '{split}/imgs' has shape {list(imgs.shape)}, expected [N, H, W, 3]; "
            f"the file is not in the EfficientMORL layout — {get_hint(path)}"
        )
    if imgs.dtype.kind not in "uif":
        raise DataError(f"{path}: '{split}/imgs' has dtype {imgs.dtype}, expected uint8 values 0..255")
    n, h, w, _ = imgs.shape
    if n == 0:
        raise DataError(f"{path}: split '{split}' is empty ('{split}/imgs' holds 0 images); {get_hint(path)}")
    if imgs.dtype != np.uint8:
        check_image_values(imgs[: min(SAMPLE_CHECK, n)], path, split)

    mask_entities = None
    if "masks" in group:
        masks = group["masks"]
        if masks.ndim != 5 or masks.shape[0] != n or masks.shape[2:4] != (h, w) or masks.shape[4] != 1:
            raise DataError(
                f"{path}: '{split}/masks' has shape {list(masks.shape)}, expected [{n}, O, {h}, {w}, 1] "
                f"to match '{split}/imgs' {list(imgs.shape)}; the file is damaged or not in the EfficientMORL layout"
            )
        mask_entities = int(masks.shape[1])
    elif need_masks:
        raise DataError(
            f"{path} has no dataset '{split}/masks' but ground-truth masks were asked for "
            f"(data.load_masks=true); set data.load_masks=false or use a file with masks"
        )

    factor_dims = None
    if "factors" in group:
        factors = group["factors"]
        if factors.ndim != 3 or factors.shape[0] != n:
            raise DataError(
                f"{path}: '{split}/factors' has shape {list(factors.shape)}, expected [{n}, O, F]; "
                "the file is damaged or not in the EfficientMORL layout"
            )
        factor_dims = int(factors.shape[2])
    elif need_factors:
        raise DataError(
            f"{path} has no dataset '{split}/factors' but factors were asked for (data.load_factors=true); "
            "set data.load_factors=false or use a file with factors (e.g. the *_with_masks_and_factors_* files)"
        )
    return SplitLayout(path, split, int(n), (int(h), int(w)), imgs.dtype, mask_entities, factor_dims)


def check_image_values(imgs: np.ndarray, path: Path, split: str) -> None:
    """Raise a `DataError` unless the images are uint8 or finite numbers within 0..255 that are not all
    within 0..1 (what images_to_tensor expects: value / 255 · 2 − 1)."""
    arr = np.asarray(imgs)
    if arr.dtype == np.uint8 or arr.size == 0:
        return
    where = f"{path}: '{split}/imgs' ({arr.dtype})"
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{where} holds NaN or infinite values; images must be numbers 0..255 — regenerate the file")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 255:
        raise DataError(
            f"{where} holds values from {lo:g} to {hi:g}; images must lie within 0..255 (uint8, as in the "
            "Zenodo files) — rescale them to 0..255"
        )
    if arr.dtype.kind == "f" and hi <= 1.0:
        raise DataError(
            f"{where} holds values from {lo:g} to {hi:g}, which looks like the range 0..1; emorl reads images "
            "as 0..255 — multiply them by 255 (or store uint8)"
        )


def masks_in_split(path: Path, split: str) -> Optional[bool]:
    """Whether the `split` group of `path` holds ground-truth masks (None when there is no such group)."""
    with reading(path, "inspecting") as handle:
        group = handle.get(split)
        if not isinstance(group, h5py.Group):
            return None
        return "masks" in group


def check_mask_values(masks: np.ndarray, path: Path, split: str, chunk: int = 1024) -> None:
    """Raise a `DataError` when `masks` holds a value other than 0 and 255 (checked `chunk` rows at a time)."""
    for start in range(0, max(len(masks), 1), chunk):
        rows = np.asarray(masks[start : start + chunk])
        bad = (rows != 0) & (rows != 255)
        if bad.any():
            seen = np.unique(rows[bad])[:5]
            shown = ", ".join(f"{v:g}" for v in seen.astype(np.float64))
            raise DataError(
                f"{path}: '{split}/masks' holds values other than 0 and 255 (e.g. {shown}); masks must be "
                "binary 0/255 as in the Zenodo files — regenerate the file"
            )


# --------------------------------------------------------------------------------------------- describe


@dataclass
class DatasetSummary:
    """One HDF5 dataset: name, shape, dtype and the value range over the rows read."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    min: Optional[float] = None
    max: Optional[float] = None
    rows_read: int = 0
    unique: Optional[list[float]] = None


@dataclass
class FileSummary:
    """What `emorl data info` shows about a file."""

    path: Path
    size_bytes: int
    groups: list[str]
    datasets: list[DatasetSummary]
    splits: dict[str, SplitLayout] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    known_as: Optional[str] = None
    problems: list[str] = field(default_factory=list)


def describe_file(path: Path, max_rows: int = 1000) -> FileSummary:
    """Groups, datasets (shape, dtype, value range over the first `max_rows` rows) and per-split layout."""
    path = Path(path)
    with reading(path, "describing") as handle:
        datasets: list[DatasetSummary] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                summary = DatasetSummary(name, tuple(int(s) for s in obj.shape), str(obj.dtype))
                if obj.dtype.kind in "uifb" and obj.size > 0:
                    rows = obj[: min(max_rows, obj.shape[0])] if obj.ndim else obj[()]
                    arr = np.asarray(rows)
                    summary.min, summary.max = float(arr.min()), float(arr.max())
                    summary.rows_read = int(arr.shape[0]) if arr.ndim else 1
                    if arr.dtype.kind in "ui":
                        vals = np.unique(arr)
                        if len(vals) <= 12:
                            summary.unique = [float(v) for v in vals]
                datasets.append(summary)

        handle.visititems(visit)
        groups = _group_names(handle)
        splits: dict[str, SplitLayout] = {}
        problems: list[str] = []
        for group in groups:
            if "imgs" in handle[group]:
                try:
                    splits[group] = read_layout(handle, path, group)
                except DataError as exc:
                    problems.append(str(exc))
        attrs = {k: _plain(v) for k, v in handle.attrs.items()}
    spec = dataset_for_file(path.name)
    return FileSummary(
        path=path,
        size_bytes=path.stat().st_size,
        groups=groups,
        datasets=datasets,
        splits=splits,
        attrs=attrs,
        known_as=spec.name if spec else None,
        problems=problems,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------------------------- writing


@contextmanager
def atomic_h5(path: Path) -> Iterator[h5py.File]:
    """Write an .h5 file atomically: into a temporary file beside `path`, renamed into place on success.

    On any error the temporary file is removed and `path` is left as it was.
    """
    with atomic_path(path) as tmp:
        try:
            with h5py.File(tmp, "w") as handle:
                yield handle
        except (OSError, RuntimeError) as exc:
            code = _write_errno(exc)
            if code in WRITE_ERRNOS:  # a full disk, a file-size limit, …: one line naming the file
                raise write_error(path, OSError(code, os.strerror(code))) from None
            raise


_HDF5_ERRNO = re.compile(r"errno = (\d+)")


def _write_errno(exc: BaseException) -> Optional[int]:
    """The operating system's errno behind an HDF5 write failure: the OSError's own, or the one HDF5 quotes
    in its message ("… errno = 28, error message = 'No space left on device'"), which h5py may raise as a
    RuntimeError while closing the file."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    found = _HDF5_ERRNO.search(str(exc))
    return int(found.group(1)) if found else None
