"""ClevrTex (Karazija et al., 2021) read in its published folder layout, as the same batches as the .h5 sets.

Layout (what the published archives unpack to; images may sit in numbered subfolders, 1,000 per folder):

    clevrtex_{variant}/[N/]CLEVRTEX_{variant}_NNNNNN.png        the image (240×320, RGB or RGBA)
    clevrtex_{variant}/[N/]CLEVRTEX_{variant}_NNNNNN_flat.png   its label mask: 0 background, 1..10 objects
    clevrtex_{variant}/[N/]CLEVRTEX_{variant}_NNNNNN.json       scene metadata (not needed here)

Variants: full, pbg, vbg, grassbg, camo, outd. As in the ClevrTex reference reader (`clevrtex_eval.py`,
which EfficientMORL's ClevrTex evaluation uses): the images are indexed by their number, which must run
0..N−1 without gaps; the test split is the first 10 % of the index, val the next 10 %, train the rest
(bounds int(0.1·N), int(0.2·N)); `outd` has no splits — it is a test set of all its images. Each image is
centre-cropped to a square of int(0.8 × the short side) (192×192 of 240×320, box (64, 24, 256, 216)),
then resized to `image_size` with PIL's bilinear filter; the mask takes the same crop and a nearest-neighbour
resize.

Shape legend: B images in a batch, S = image_size, O = 11 mask entities (background = entity 0).
Batches are those of `H5Dataset`: `imgs` float32 [B, 3, S, S] in [-1, 1], `masks` float32 [B, O, 1, S, S]
with values 0/255 (the label mask one-hot encoded), `index` int64 [B].
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from emorl_cli.config import DATASET_ENTITIES, DataConfig
from emorl_cli.data.batches import MEMORY_FRACTION, BatchedDataset, available_memory_bytes, images_to_tensor
from emorl_cli.data.picture_files import open_picture
from emorl_cli.data.registry import CLEVRTEX_VARIANTS, clevrtex_folder_name
from emorl_cli.errors import DataError

ENTITIES = DATASET_ENTITIES["clevrtex"]  # background + at most 10 objects
CROP_FRACTION = 0.8
# (start, stop) of each split as fractions of the index; outd is a test set as a whole.
SPLIT_FRACTIONS = {"test": (0.0, 0.1), "val": (0.1, 0.2), "train": (0.2, 1.0)}
TEST_ONLY_VARIANTS = ("outd",)
MASK_MODES = ("L", "P", "I", "I;16")
_FOLDER = re.compile(r"^clevrtex_([a-z]+)$")


# --------------------------------------------------------------------------------------------- layout


def variant_of_folder(name: str) -> Optional[str]:
    """The variant a folder name stands for ('clevrtex_camo' → 'camo'), or None."""
    match = _FOLDER.match(name)
    return match.group(1) if match and match.group(1) in CLEVRTEX_VARIANTS else None


def variant_folder(root: Path, variant: str) -> Path:
    """`root/clevrtex_{variant}`, or `root` itself when it is that folder (as the reference reader)."""
    root = Path(root)
    name = clevrtex_folder_name(variant)
    return root if root.name == name else root / name


def fetch_hint(folder: Path, variant: str) -> str:
    """What to run to get a variant's folder."""
    parent = folder.parent if folder.name == clevrtex_folder_name(variant) else folder
    return (
        f"get it with `emorl data fetch --clevrtex --variant {variant} --dest {parent}`, or point --data-dir "
        f"at the folder holding {clevrtex_folder_name(variant)}/"
    )


@dataclass(frozen=True)
class ClevrTexIndex:
    """The images of one variant folder, by number: `images[i]` is CLEVRTEX_{variant}_{i:06d}.png."""

    folder: Path
    variant: str
    images: tuple[Path, ...]
    masks: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.images)


def index_variant(folder: Path, variant: str) -> ClevrTexIndex:
    """Find every image of a variant below `folder` (any nesting) with its mask.

    Raises:
        DataError: the folder is missing, holds no images, an image lacks its mask, a number appears twice,
            or numbers are missing (the splits are defined on a gap-free index).
    """
    if variant not in CLEVRTEX_VARIANTS:
        raise DataError(f"unknown ClevrTex variant {variant!r}; choose from {', '.join(CLEVRTEX_VARIANTS)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"ClevrTex folder {folder} does not exist; {fetch_hint(folder, variant)}")
    prefix = f"CLEVRTEX_{variant}_"
    found: dict[int, Path] = {}
    for path in folder.glob(f"**/{prefix}[0-9][0-9][0-9][0-9][0-9][0-9].png"):
        number = int(path.stem[len(prefix) :])
        if number in found:
            raise DataError(
                f"ClevrTex image number {number} appears twice: {found[number]} and {path}; remove one copy"
            )
        found[number] = path
    if not found:
        raise DataError(
            f"{folder} holds no ClevrTex images ({prefix}NNNNNN.png, in any subfolder); {fetch_hint(folder, variant)}"
        )
    missing = [i for i in range(max(found) + 1) if i not in found]
    if missing:
        shown = ", ".join(str(i) for i in missing[:5]) + (", …" if len(missing) > 5 else "")
        raise DataError(
            f"{folder} lacks {len(missing)} of the ClevrTex images numbered 0..{max(found)} ({shown}); the splits "
            f"are defined on the whole index — unpack every archive of the variant ({fetch_hint(folder, variant)})"
        )
    images = tuple(found[i] for i in range(len(found)))
    masks = tuple(p.with_name(p.stem + "_flat.png") for p in images)
    for image, mask in zip(images, masks, strict=True):
        if not mask.is_file():
            raise DataError(f"ClevrTex image {image} has no mask {mask.name} beside it; the folder is incomplete")
    return ClevrTexIndex(folder, variant, images, masks)


def split_range(num_images: int, split: str, variant: str) -> range:
    """The image numbers of a split: test [0, ⌊0.1N⌋), val [⌊0.1N⌋, ⌊0.2N⌋), train [⌊0.2N⌋, N); outd all."""
    if split not in SPLIT_FRACTIONS:
        raise DataError(f"ClevrTex split must be one of {', '.join(SPLIT_FRACTIONS)}, got {split!r}")
    if variant in TEST_ONLY_VARIANTS:
        if split != "test":
            raise DataError(
                f"ClevrTex {variant} is a test set only (all {num_images} images); use split 'test' "
                "and train on another variant, e.g. data.train_file=clevrtex_full"
            )
        return range(num_images)
    start, stop = SPLIT_FRACTIONS[split]
    return range(int(start * num_images), int(stop * num_images))


# --------------------------------------------------------------------------------------------- pixels


def center_crop_box(width: int, height: int, fraction: float = CROP_FRACTION) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred square crop of int(fraction × the short side)."""
    side = int(fraction * float(min(width, height)))
    return ((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)


def _open_png(path: Path) -> Image.Image:
    return open_picture(path, "ClevrTex image", "the file is damaged — fetch the variant again")


def load_image(path: Path, size: int) -> np.ndarray:
    """A ClevrTex image → uint8 [size, size, 3]: centre crop, bilinear resize (alpha dropped after it)."""
    image = _open_png(path)
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    image = image.crop(center_crop_box(image.width, image.height))
    resized = np.asarray(image.resize((size, size), resample=Image.Resampling.BILINEAR))
    return np.ascontiguousarray(resized[..., :3])


def load_labels(path: Path, size: int) -> np.ndarray:
    """A ClevrTex `_flat.png` label mask → uint8 [size, size] (0 background, 1..10 objects): crop, nearest resize.

    Raises:
        DataError: the mask is not a one-channel label image or holds a label beyond the 10 objects.
    """
    mask = _open_png(path)
    if mask.mode not in MASK_MODES:
        raise DataError(
            f"{path} is a {mask.mode} image; ClevrTex masks are one-channel label images ({', '.join(MASK_MODES)})"
        )
    mask = mask.crop(center_crop_box(mask.width, mask.height))
    labels = np.asarray(mask.resize((size, size), resample=Image.Resampling.NEAREST))
    if labels.size and int(labels.max()) >= ENTITIES:
        raise DataError(
            f"{path} holds label {int(labels.max())}, but ClevrTex has at most {ENTITIES - 1} objects "
            f"(labels 0..{ENTITIES - 1}); the file is not a ClevrTex mask"
        )
    return labels.astype(np.uint8)


def labels_to_masks(labels: np.ndarray, entities: int = ENTITIES) -> np.ndarray:
    """Label maps uint8 [B, S, S] → one-hot masks uint8 [B, O, S, S, 1] with 0/255 (entity j where label = j)."""
    ids = np.arange(entities, dtype=labels.dtype).reshape(1, -1, 1, 1)
    return ((labels[:, None] == ids) * np.uint8(255)).astype(np.uint8)[..., None]


# --------------------------------------------------------------------------------------------- dataset


class ClevrTexDataset(BatchedDataset):
    """One split of one ClevrTex variant: items and batches as `H5Dataset` gives them.

    Images (and, with `load_masks`, masks) are decoded from the PNGs when first asked for. With
    `in_memory`, when the split fits in half the available memory, the main process keeps what it decoded
    (uint8 images and label maps), so later epochs decode nothing; DataLoader workers decode in parallel
    instead and keep nothing (no copy per worker).

    Args:
        folder: the variant folder (`…/clevrtex_full`), or the folder holding it.
        variant: full, pbg, vbg, grassbg, camo or outd.
        split: 'train', 'val' or 'test' (outd: 'test' only).
        image_size: side S of the images and masks after crop and resize (the reference: 128).
        load_masks: include `masks` in batches.
        in_memory: keep decoded images in the main process when they fit.
        memory_limit_bytes: budget for `in_memory` (default: half the available memory).
    """

    def __init__(
        self,
        folder: Union[str, Path],
        variant: str,
        split: str,
        *,
        image_size: int = 128,
        load_masks: bool = True,
        in_memory: bool = True,
        memory_limit_bytes: Optional[int] = None,
    ):
        super().__init__()
        self.variant = variant
        self.split = split
        self.path = variant_folder(Path(folder), variant)
        self.index = index_variant(self.path, variant)
        self.numbers = split_range(len(self.index), split, variant)
        if len(self.numbers) == 0:
            raise DataError(
                f"the {split} split of {self.path} is empty ({len(self.index)} images in the variant); "
                "unpack the whole variant"
            )
        self.image_hw = (image_size, image_size)
        self.load_masks = load_masks
        self.entities = ENTITIES
        self.in_memory = in_memory and self._fits(memory_limit_bytes)
        self._imgs: Optional[np.ndarray] = None  # uint8 [N, S, S, 3], filled as images are decoded
        self._labels: Optional[np.ndarray] = None  # uint8 [N, S, S]
        self._cached: Optional[np.ndarray] = None  # bool [N]

    @property
    def mask_hw(self) -> tuple[int, int]:
        """(Hm, Wm): the masks are resized with the images."""
        return self.image_hw

    def _fits(self, limit: Optional[int]) -> bool:
        if limit is None:
            avail = available_memory_bytes()
            limit = int(avail * MEMORY_FRACTION) if avail is not None else None
        per_image = self.image_hw[0] * self.image_hw[1] * (3 + (1 if self.load_masks else 0))
        return limit is None or len(self) * per_image <= limit

    def __len__(self) -> int:
        return len(self.numbers)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_imgs"] = state["_labels"] = state["_cached"] = None  # workers keep no cache of their own
        return state

    def close(self) -> None:
        """Drop the decoded images (nothing stays open between reads)."""
        self._imgs = self._labels = self._cached = None

    def _cache(self) -> bool:
        """Whether this process keeps decoded images (the main process only), allocating the store lazily."""
        if not self.in_memory or get_worker_info() is not None:
            return False
        if self._cached is None:
            n, (h, w) = len(self), self.image_hw
            self._imgs = np.empty((n, h, w, 3), np.uint8)
            self._labels = np.empty((n, h, w), np.uint8) if self.load_masks else None
            self._cached = np.zeros(n, bool)
        return True

    def _decode(self, i: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        number = self.numbers[i]
        size = self.image_hw[0]
        image = load_image(self.index.images[number], size)
        labels = load_labels(self.index.masks[number], size) if self.load_masks else None
        return image, labels

    def _read(self, idx: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Images uint8 [B, S, S, 3] and label maps uint8 [B, S, S] (None without masks) of split items `idx`."""
        cache = self._cache()
        imgs = np.empty((len(idx), *self.image_hw, 3), np.uint8)
        labels = np.empty((len(idx), *self.image_hw), np.uint8) if self.load_masks else None
        for j, i in enumerate(idx.tolist()):
            if cache and self._cached[i]:  # type: ignore[index]
                imgs[j] = self._imgs[i]  # type: ignore[index]
                if labels is not None:
                    labels[j] = self._labels[i]  # type: ignore[index]
                continue
            image, label = self._decode(i)
            imgs[j] = image
            if labels is not None:
                labels[j] = label
            if cache:
                self._imgs[i] = image  # type: ignore[index]
                if label is not None:
                    self._labels[i] = label  # type: ignore[index]
                self._cached[i] = True  # type: ignore[index]
        return imgs, labels

    def get_batch(self, indices: Any) -> dict[str, torch.Tensor]:
        """Stacked batch for split items `indices` (0 is the split's first image).

        Returns:
            imgs float32 [B, 3, S, S] in [-1, 1]; masks float32 [B, O, 1, S, S] 0/255 (with load_masks);
            index int64 [B].
        """
        idx = self._normalise(indices)
        imgs, labels = self._read(idx)
        out: dict[str, torch.Tensor] = {"imgs": images_to_tensor(imgs)}
        if labels is not None:
            masks = labels_to_masks(labels)  # [B, O, S, S, 1]
            b, o, h, w, _ = masks.shape
            out["masks"] = torch.from_numpy(masks.reshape(b, o, 1, h, w).astype(np.float32))
        out["index"] = torch.from_numpy(idx.copy())
        return out

    def __repr__(self) -> str:
        return (
            f"ClevrTexDataset({self.path}, variant={self.variant!r}, split={self.split!r}, n={len(self)}, "
            f"image={self.image_hw[0]}x{self.image_hw[1]})"
        )


# --------------------------------------------------------------------------------------------- opening


def config_variant(data_cfg: DataConfig, split: str) -> str:
    """The variant a config names for a split: its train_file (train) or test_file (val, test)."""
    name = data_cfg.train_file if split == "train" else data_cfg.test_file
    variant = variant_of_folder(name)
    if variant is None:  # the config validator prevents this; kept for hand-built configs
        raise DataError(f"{name!r} names no ClevrTex variant folder; use clevrtex_{{{','.join(CLEVRTEX_VARIANTS)}}}")
    return variant


def open_clevrtex_split(
    data_cfg: DataConfig,
    split: str,
    data_dir: Optional[Path] = None,
    *,
    folder: Optional[Path] = None,
    variant: Optional[str] = None,
    in_memory: Optional[bool] = None,
    load_masks: Optional[bool] = None,
    load_factors: Optional[bool] = None,
) -> ClevrTexDataset:
    """A ClevrTex split for a config (`open_split` does this for `data.dataset: clevrtex`).

    Args:
        data_cfg: the `data` section; train_file / test_file name the variant folders (e.g. clevrtex_full).
        split: 'train', 'val' or 'test'.
        data_dir: the folder holding the variant folders (default `data.data_dir`).
        folder: a variant folder given directly (the CLI's `--data`); its name picks the variant when it is
            `clevrtex_{variant}`, else it is searched for the config's variant folder.
        variant: evaluate this variant instead of the config's (the CLI's `--variant`).
        in_memory / load_masks / load_factors: override the config's values when given.

    Raises:
        DataError: missing or incomplete folder, unknown split, or factors asked for (ClevrTex has none).
    """
    if load_factors if load_factors is not None else data_cfg.load_factors:
        raise DataError("ClevrTex provides no ground-truth factor arrays (DCI needs them); set data.load_factors=false")
    if folder is not None:
        variant = variant or variant_of_folder(Path(folder).name) or config_variant(data_cfg, split)
        root = Path(folder)
    else:
        variant = variant or config_variant(data_cfg, split)
        root = Path(data_dir) if data_dir is not None else Path(data_cfg.data_dir)
    return ClevrTexDataset(
        root,
        variant,
        split,
        image_size=data_cfg.image_size,
        load_masks=data_cfg.load_masks if load_masks is None else load_masks,
        in_memory=data_cfg.in_memory if in_memory is None else in_memory,
    )
