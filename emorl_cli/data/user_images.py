"""A user's own pictures, prepared as a model's data config prepares its dataset: what `emorl segment` and
`emorl_cli.load(...).segment(...)` feed the model.

Shape legend: H×W a picture as given (any size), S the side the model sees (`data.image_size`).

Where pictures come from (`collect_sources`): image files, folders (the pictures directly inside them),
glob patterns, and `.h5` files in the EfficientMORL layout (`FILE.h5` is its `test` group, `FILE.h5:train`
another group). In Python also uint8 arrays and PIL images (`sources_from_python`).

How a picture becomes uint8 [S, S, 3] (`prepare_picture`), following the dataset the model was trained on:

- `data.clevr_crop` (CLEVR): the paper's crop box (64, 29, 256, 221) of the 320×240 frame, scaled with the
  picture when it has another size, then a bicubic resize to S (as `data/dataset.py:clevr_preprocess_image`);
- ClevrTex: the centred square of 0.8 × the shorter side, bilinear resize (as `data/clevrtex.py:load_image`);
- anything else (Tetrominoes, Multi-dSprites, your own imported pictures): a picture of S×S is used as it is,
  any other is centre-cropped to a square and resized with the bicubic filter (as `emorl data import`).

Each prepared picture carries a `Preparation` that says what was done, in the original picture's pixels.
"""

from __future__ import annotations

import glob
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from emorl_cli.config import CLEVR_CROP_BOX, DataConfig
from emorl_cli.data import picture_files
from emorl_cli.data.clevrtex import center_crop_box
from emorl_cli.data.folder_import import square_box
from emorl_cli.data.h5 import check_image_values, reading
from emorl_cli.errors import DataError, InputError

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
H5_SUFFIXES = (".h5", ".hdf5")
CLEVR_FRAME = (320, 240)  # (W, H) of the frames the CLEVR crop box is given in
DEFAULT_H5_GROUP = "test"
PictureLike = Union[str, Path, np.ndarray, Image.Image]


@dataclass(frozen=True)
class Preparation:
    """What was done to one picture: its size as given (W, H), the box kept (left, top, right, bottom, in
    its pixels), the side S it was resized to, and how (`method`)."""

    original_size: tuple[int, int]
    crop: tuple[int, int, int, int]
    size: int
    method: str

    @property
    def unchanged(self) -> bool:
        return self.method == "unchanged"

    def describe(self) -> str:
        w, h = self.original_size
        return f"{w}x{h} → {self.size}x{self.size}: {self.method}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "original_size": list(self.original_size),
            "crop": list(self.crop),
            "size": self.size,
            "method": self.method,
        }


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class PictureSource:
    """One picture to segment: a unique `name` (the output files' stem), and where it is — a file `path`,
    an image `index` of an .h5 `group`, or a picture in memory (`array` uint8 [H, W, 3])."""

    name: str
    path: Optional[Path] = None
    group: Optional[str] = None
    index: Optional[int] = None
    array: Optional[np.ndarray] = None

    @property
    def origin(self) -> str:
        """Where the picture came from, for messages and segments.json."""
        if self.array is not None:
            return "array"
        if self.group is not None:
            return f"{self.path}:{self.group}[{self.index}]"
        return str(self.path)


def _has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _split_h5(text: str) -> tuple[Path, Optional[str]]:
    """'FILE.h5:GROUP' → (FILE.h5, GROUP); anything else → (path, None)."""
    head, sep, tail = text.rpartition(":")
    if sep and head.lower().endswith(H5_SUFFIXES) and tail and "/" not in tail:
        return Path(head), tail
    return Path(text), None


def _h5_sources(path: Path, group: Optional[str]) -> list[PictureSource]:
    with reading(path) as handle:
        groups = sorted(k for k in handle.keys() if "imgs" in handle[k])
        chosen = group or (DEFAULT_H5_GROUP if DEFAULT_H5_GROUP in groups else (groups[0] if groups else None))
        if chosen is None or chosen not in groups:
            raise DataError(
                f"{path} has no group {chosen!r} holding 'imgs' (groups with images: {', '.join(groups) or 'none'}); "
                f"name one as {path}:GROUP"
            )
        imgs = handle[chosen]["imgs"]
        if imgs.ndim != 4 or imgs.shape[-1] != 3:
            raise DataError(f"{path}: '{chosen}/imgs' has shape {list(imgs.shape)}; expected [N, H, W, 3] pictures")
        count = int(imgs.shape[0])
    return [PictureSource(f"{path.stem}-{chosen}-{i:06d}", path=path, group=chosen, index=i) for i in range(count)]


def _folder_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES)
    if not files:
        h5 = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in H5_SUFFIXES)
        tip = f" (it holds {', '.join(h5[:3])}: give .h5 files themselves as inputs)" if h5 else ""
        raise DataError(
            f"folder {folder} holds no pictures ({', '.join(PICTURE_SUFFIXES)}){tip}; give a folder of images, "
            "image files, a glob such as 'photos/*.png' or an .h5 file"
        )
    return files


def _unique_names(stems: Sequence[str]) -> list[str]:
    """The stems, with -2, -3, … added to repeats (in input order), so every output name is unique."""
    seen: dict[str, int] = {}
    names = []
    taken = set(stems)
    for stem in stems:
        count = seen.get(stem, 0) + 1
        seen[stem] = count
        name = stem if count == 1 else f"{stem}-{count}"
        while count > 1 and name in taken:
            count += 1
            name = f"{stem}-{count}"
        taken.add(name)
        names.append(name)
    return names


def collect_sources(inputs: Iterable[Union[str, Path]]) -> list[PictureSource]:
    """The pictures named on a command line: files, folders, globs and .h5 files (see the module docstring),
    in the order given (a folder's and a glob's pictures sorted by name)."""
    files: list[Path] = []
    sources: list[PictureSource] = []
    order: list[Union[Path, PictureSource]] = []
    for item in inputs:
        text = str(item)
        path, group = _split_h5(text)
        if path.suffix.lower() in H5_SUFFIXES and path.is_file():
            found = _h5_sources(path, group)
            sources.extend(found)
            order.extend(found)
        elif path.is_dir():
            found_files = _folder_files(path)
            files.extend(found_files)
            order.extend(found_files)
        elif path.is_file():
            files.append(path)
            order.append(path)
        elif _has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
            if not matches:
                raise InputError(f"no file matches {text!r}; check the pattern (quote it so the shell leaves it alone)")
            files.extend(matches)
            order.extend(matches)
        else:
            raise InputError(f"input {text!r} does not exist; give image files, folders, globs or .h5 files")
    if not order:
        raise InputError("no input pictures given; name image files, folders, globs or .h5 files")
    names = iter(_unique_names([e.stem if isinstance(e, Path) else e.name for e in order]))
    return [
        PictureSource(next(names), path=entry) if isinstance(entry, Path) else _renamed(entry, next(names))
        for entry in order
    ]


def _renamed(source: PictureSource, name: str) -> PictureSource:
    if name == source.name:
        return source
    return PictureSource(name, path=source.path, group=source.group, index=source.index)


def sources_from_python(images: Any, names: Optional[Sequence[str]] = None) -> list[PictureSource]:
    """What `Model.segment` accepts: a uint8 array [H, W, 3] or [N, H, W, 3], or a list of PIL images, file
    paths and uint8 arrays [H, W, 3]; `names` (unique, one per picture) replace the default names."""
    sources = _python_sources(images)
    if names is None:
        return sources
    names = [str(n) for n in names]
    if len(names) != len(sources) or len(set(names)) != len(names):
        raise InputError(
            f"names holds {len(names)} names ({len(set(names))} different) for {len(sources)} pictures; give one "
            "unique name per picture"
        )
    return [PictureSource(n, path=s.path, array=s.array) for n, s in zip(names, sources, strict=True)]


def _python_sources(images: Any) -> list[PictureSource]:
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise InputError(
                f"images has shape {list(images.shape)}; give a uint8 array [H, W, 3] or [N, H, W, 3], a list of "
                "PIL images or file paths"
            )
        return [PictureSource(f"image-{i:06d}", array=_checked_array(a, i)) for i, a in enumerate(images)]
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    if not isinstance(images, (list, tuple)):
        raise InputError(
            f"images is a {type(images).__name__}; give a uint8 array [H, W, 3] or [N, H, W, 3], a list of PIL "
            "images or file paths"
        )
    if not images:
        raise InputError("images is empty; give at least one picture")
    stems, entries = [], []
    for i, item in enumerate(images):
        if isinstance(item, (str, Path)):
            path = Path(item)
            if not path.is_file():
                raise InputError(f"image file {str(path)!r} (item {i}) does not exist; check the path")
            stems.append(path.stem)
            entries.append(("path", path))
        elif isinstance(item, Image.Image):
            stems.append(f"image-{i:06d}")
            entries.append(("array", np.asarray(item.convert("RGB"))))
        elif isinstance(item, np.ndarray):
            stems.append(f"image-{i:06d}")
            entries.append(("array", _checked_array(item, i)))
        else:
            raise InputError(
                f"images[{i}] is a {type(item).__name__}; give PIL images, file paths or uint8 arrays [H, W, 3]"
            )
    names = _unique_names(stems)
    return [
        PictureSource(name, path=value) if kind == "path" else PictureSource(name, array=value)
        for name, (kind, value) in zip(names, entries, strict=True)
    ]


def _checked_array(array: np.ndarray, i: int) -> np.ndarray:
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise InputError(f"image {i} has shape {list(array.shape)}; expected [H, W, 3] (RGB)")
    if array.dtype != np.uint8:
        check_image_values(array, Path(f"image {i}"), "python")
        if array.dtype.kind == "f":
            array = np.rint(array)
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array[..., :3])


# --------------------------------------------------------------------------------------------- pixels


def read_pictures(sources: Sequence[PictureSource]) -> list[Image.Image]:
    """The sources' pixels as PIL images, in order; pictures of one .h5 group are read in one go."""
    from_h5: dict[tuple[Path, str], list[int]] = {}
    for source in sources:
        if source.group is not None:
            from_h5.setdefault((source.path, source.group), []).append(source.index)  # type: ignore[arg-type]
    rows: dict[tuple[Path, str, int], np.ndarray] = {}
    for (path, group), indices in from_h5.items():
        wanted = sorted(set(indices))
        with reading(path) as handle:
            pixels = np.asarray(handle[group]["imgs"][wanted])  # [n, H, W, 3], h5py needs increasing indices
        check_image_values(pixels, path, group)
        for index, row in zip(wanted, pixels, strict=True):
            rows[(path, group, index)] = (
                np.rint(row).astype(np.uint8) if row.dtype.kind == "f" else row.astype(np.uint8)
            )
    return [
        Image.fromarray(rows[(s.path, s.group, s.index)]) if s.group is not None else open_picture(s)  # type: ignore[index]
        for s in sources
    ]


def open_picture(source: PictureSource) -> Image.Image:
    """One file's or array's pixels as a PIL image (a file turned upright by its EXIF orientation; past the
    pixel limit, or unreadable, a one-line `DataError` from picture_files.open_picture)."""
    if source.array is not None:
        return Image.fromarray(source.array)
    if source.group is not None:
        return read_pictures([source])[0]
    return picture_files.open_picture(
        source.path, "image", "replace the file or leave it out of the inputs", upright=True
    )


def check_readable(source: PictureSource) -> tuple[int, int]:
    """(W, H) from the file's header, or a one-line `DataError` for a file that is not a picture (checked
    before any work starts; a picture damaged further in is found when it is read)."""
    if source.array is not None:
        return (source.array.shape[1], source.array.shape[0])
    if source.group is not None:
        return (0, 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a decompression-bomb warning: the size is checked just below
            with Image.open(source.path) as opened:
                size = opened.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"cannot read image {source.path} ({exc}); replace the file or leave it out of the inputs"
        ) from None
    limit = picture_files.MAX_PIXELS
    if size[0] * size[1] > limit:
        raise DataError(
            f"image {source.path} is {size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.3g} megapixels), more "
            f"than the {limit / 1e6:.3g} megapixels emorl opens; scale it down or leave it out of the inputs"
        )
    return size


def _scaled_clevr_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The CLEVR crop box in a picture of width×height (the paper's box when it is the 320×240 frame)."""
    if (width, height) == CLEVR_FRAME:
        return CLEVR_CROP_BOX
    sx, sy = width / CLEVR_FRAME[0], height / CLEVR_FRAME[1]
    left, top, right, bottom = CLEVR_CROP_BOX
    return (round(left * sx), round(top * sy), round(right * sx), round(bottom * sy))


def prepare_picture(picture: Image.Image, data_cfg: DataConfig) -> tuple[np.ndarray, Preparation]:
    """One picture → (uint8 [S, S, 3], what was done), as `data_cfg`'s dataset is prepared (module docstring)."""
    size = data_cfg.image_size
    width, height = picture.size
    if data_cfg.dataset == "clevrtex":
        rgb = picture if picture.mode in ("RGB", "RGBA") else picture.convert("RGB")
        box = center_crop_box(width, height)
        pixels = np.asarray(rgb.crop(box).resize((size, size), resample=Image.Resampling.BILINEAR))[..., :3]
        method = "ClevrTex centre crop (0.8 of the shorter side), bilinear resize"
    elif data_cfg.clevr_crop:
        box = _scaled_clevr_box(width, height)
        scaled = "" if (width, height) == CLEVR_FRAME else f", scaled from the {CLEVR_FRAME[0]}x{CLEVR_FRAME[1]} frame"
        rgb = picture.convert("RGB")
        pixels = np.asarray(rgb.crop(box).resize((size, size), Image.Resampling.BICUBIC))
        method = f"CLEVR crop {box}{scaled}, bicubic resize"
    else:
        rgb = picture.convert("RGB")
        box = square_box(width, height)
        if (width, height) == (size, size):
            pixels, method = np.asarray(rgb), "unchanged"
        else:
            pixels = np.asarray(rgb.crop(box).resize((size, size), Image.Resampling.BICUBIC))
            method = "centre square crop, bicubic resize" if width != height else "bicubic resize"
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)  # [S, S, 3]
    return pixels, Preparation((width, height), tuple(int(v) for v in box), size, method)  # type: ignore[arg-type]


def summarize_preparations(preparations: Sequence[Preparation]) -> Optional[str]:
    """One line on what was done to the pictures that were changed (None when none was)."""
    changed = [p for p in preparations if not p.unchanged]
    if not changed:
        return None
    methods = sorted({p.method for p in changed})
    return (
        f"prepared {len(changed)} of {len(preparations)} pictures to {changed[0].size}x{changed[0].size} as the "
        f"model's dataset is prepared: {'; '.join(methods)}"
    )
