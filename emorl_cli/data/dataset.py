"""The torch Dataset over one split of an .h5 file, a batched fast path, and the DataLoader helper.

Shape legend: N images in the split, B in a batch, O mask entities (background = entity 0), F factor
columns, H×W the image size the model sees, Hm×Wm the mask size (equal to H×W except for CLEVR, whose
masks stay 192×192 while the images are resized to 96 or 128).

An item is a dict:

    imgs     float32 [3, H, W]      in [-1, 1]  ((x / 255) * 2 - 1, as the original)
    masks    float32 [O, 1, Hm, Wm] 0 or 255 exactly as stored (not rescaled; only with load_masks)
    factors  float32 [O, F]         (only with load_factors)
    index    int                    the sample's index in the split

A batch (from `get_batch`, or a DataLoader made by `make_dataloader`) stacks the same keys along a leading
B axis, with `index` an int64 tensor [B]. Every tensor is contiguous (never channels-last).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, Union

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from emorl_cli.config import CLEVR_CROP_BOX, DATASET_ENTITIES, SIZE_LIMITS, DataConfig
from emorl_cli.data.batches import (
    MEMORY_FRACTION,
    BatchedDataset,
    available_memory_bytes,
    collate_batch,
    images_to_tensor,
    masks_to_tensor,
)
from emorl_cli.data.h5 import (
    SAMPLE_CHECK,
    SplitLayout,
    check_image_values,
    check_mask_values,
    get_hint,
    read_layout,
    reading,
)
from emorl_cli.errors import DataError

log = logging.getLogger("emorl.data")

# Rows read from the file at a time when loading a split into memory.
READ_CHUNK = 4096


def clevr_preprocess_image(img: np.ndarray, size: int) -> np.ndarray:
    """CLEVR image uint8 [240, 320, 3] → uint8 [size, size, 3]: crop (64,29,256,221) to 192×192, then resize.

    The resize is PIL's bicubic filter: the original called `PIL.Image.resize((s, s))` without a filter
    under Pillow 7.2, whose default for RGB images is BICUBIC.
    """
    pil = Image.fromarray(np.asarray(img, dtype=np.uint8)).crop(CLEVR_CROP_BOX)
    return np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))


def clevr_crop_masks(masks: np.ndarray) -> np.ndarray:
    """Masks [..., 240, 320, 1] → [..., 192, 192, 1] (cropped, not resized)."""
    left, top, right, bottom = CLEVR_CROP_BOX
    return masks[..., top:bottom, left:right, :]


class H5Dataset(BatchedDataset):
    """One split (`train` or `test`) of an .h5 file in the EfficientMORL layout.

    The file is validated when the dataset is built. With `in_memory` (and when the split fits in half the
    available memory) the split is read once into uint8 arrays — CLEVR images already cropped and resized —
    and items are converted to float on the fly. Otherwise each process opens the file itself on first use
    (lazily, so DataLoader workers never share an HDF5 handle across a fork) and keeps it open.

    Args:
        path: the .h5 file.
        split: group name, 'train' or 'test'.
        load_masks: include `masks` in items (the file must have them).
        load_factors: include `factors` in items (the file must have them).
        clevr_crop: crop (64,29,256,221) to 192×192 and resize images to `image_size`; masks cropped only.
        image_size: side the model sees; checked against the file (required with `clevr_crop`).
        in_memory: hold the split in memory when it fits.
        memory_limit_bytes: budget for `in_memory` (default: half the available memory).
    """

    def __init__(
        self,
        path: Union[str, Path],
        split: str,
        *,
        load_masks: bool = True,
        load_factors: bool = False,
        clevr_crop: bool = False,
        image_size: Optional[int] = None,
        in_memory: bool = True,
        memory_limit_bytes: Optional[int] = None,
    ):
        super().__init__()
        self.path = Path(path)
        self.split = split
        self.load_masks = load_masks
        self.load_factors = load_factors
        self.clevr_crop = clevr_crop
        with reading(self.path, "validating") as handle:
            self.layout: SplitLayout = read_layout(
                handle, self.path, split, need_masks=load_masks, need_factors=load_factors
            )
            self.image_hw = self._check_size(image_size)
            self.in_memory = in_memory and self._fits(memory_limit_bytes)
            self._imgs: Optional[np.ndarray] = None  # uint8 [N, 3, H, W] (CLEVR: already resized)
            self._masks: Optional[np.ndarray] = None  # [N, O, Hm, Wm, 1]
            self._factors: Optional[np.ndarray] = None  # float32 [N, O, F]
            if self.in_memory:
                self._load_all(handle)
            elif load_masks:
                rows = handle[split]["masks"][: min(SAMPLE_CHECK, self.layout.num_images)]
                check_mask_values(rows, self.path, split)
        self._h5: Optional[h5py.File] = None
        self._h5_pid: Optional[int] = None

    # ------------------------------------------------------------------------------------------ checks

    def _check_size(self, image_size: Optional[int]) -> tuple[int, int]:
        """(H, W) of the images items carry, after checking the file against `image_size`."""
        h, w = self.layout.image_hw
        if self.clevr_crop:
            left, top, right, bottom = CLEVR_CROP_BOX
            if h < bottom or w < right:
                raise DataError(
                    f"{self.path} holds {h}x{w} images, too small for the CLEVR crop box {CLEVR_CROP_BOX} "
                    f"(needs at least {bottom}x{right}); set data.clevr_crop=false for non-CLEVR data"
                )
            if image_size is None:
                raise DataError("the CLEVR crop needs data.image_size (96 or 128) to resize to; set it")
            return (image_size, image_size)
        if image_size is not None and (h, w) != (image_size, image_size):
            if (h, w) == (240, 320):
                tip = "; for CLEVR set data.clevr_crop=true"
            elif h == w:
                tip = f"; set data.image_size={h}"
            else:
                tip = ""
            raise DataError(
                f"{self.path} holds {h}x{w} images but data.image_size is {image_size}{tip} "
                "or use the file made for this config"
            )
        return (h, w)

    @property
    def mask_hw(self) -> tuple[int, int]:
        """(Hm, Wm): masks keep the stored size, except CLEVR's which are cropped to 192×192."""
        if self.clevr_crop:
            left, top, right, bottom = CLEVR_CROP_BOX
            return (bottom - top, right - left)
        return self.layout.image_hw

    def _bytes_needed(self) -> int:
        n = self.layout.num_images
        total = n * self.image_hw[0] * self.image_hw[1] * 3
        if self.load_masks and self.layout.mask_entities:
            hm, wm = self.mask_hw
            total += n * self.layout.mask_entities * hm * wm
        if self.load_factors and self.layout.factor_dims:
            total += n * (self.layout.mask_entities or 1) * self.layout.factor_dims * 4
        return total

    def _fits(self, limit: Optional[int]) -> bool:
        if limit is None:
            avail = available_memory_bytes()
            limit = int(avail * MEMORY_FRACTION) if avail is not None else None
        needed = self._bytes_needed()
        if limit is not None and needed > limit:
            log.warning(
                "%s/%s needs %.1f GB in memory, more than the %.1f GB budget; reading from disk instead",
                self.path,
                self.split,
                needed / 1e9,
                limit / 1e9,
            )
            return False
        return True

    # ------------------------------------------------------------------------------------------ loading

    def _load_all(self, handle: h5py.File) -> None:
        group = handle[self.split]
        n = self.layout.num_images
        imgs_ds = group["imgs"]
        if self.clevr_crop:
            out = np.empty((n, *self.image_hw, 3), np.uint8)
            for start in range(0, n, READ_CHUNK):
                rows = imgs_ds[start : start + READ_CHUNK]
                check_image_values(rows, self.path, self.split)
                for j, img in enumerate(rows):
                    out[start + j] = clevr_preprocess_image(img, self.image_hw[0])
        else:
            out = imgs_ds[()]
            check_image_values(out, self.path, self.split)
        self._imgs = np.ascontiguousarray(out.transpose(0, 3, 1, 2))  # [N, 3, H, W]: batches need no transpose
        if self.load_masks:
            masks_ds = group["masks"]
            if self.clevr_crop:
                left, top, right, bottom = CLEVR_CROP_BOX
                masks = masks_ds[:, :, top:bottom, left:right, :]
            else:
                masks = masks_ds[()]
            check_mask_values(masks, self.path, self.split)
            self._masks = masks
        if self.load_factors:
            self._factors = np.asarray(group["factors"][()], dtype=np.float32)

    def _handle(self) -> h5py.File:
        """This process's own read handle (opened on first use; re-opened after a fork)."""
        pid = os.getpid()
        if self._h5 is None or self._h5_pid != pid:
            try:
                self._h5 = h5py.File(self.path, "r")
            except OSError as exc:
                raise DataError(f"cannot reopen {self.path} ({exc}); {get_hint(self.path)}") from None
            self._h5_pid = pid
        return self._h5

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = None  # an h5py handle cannot travel to another process
        state["_h5_pid"] = None
        return state

    def close(self) -> None:
        """Close this process's file handle (in-memory datasets hold none)."""
        if self._h5 is not None and self._h5_pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._h5_pid = None

    # ------------------------------------------------------------------------------------------ access

    def __len__(self) -> int:
        return self.layout.num_images

    def _read_rows(self, idx: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        """Images [B, 3, H, W], masks [B, O, Hm, Wm, 1], factors [B, O, F] for sample indices `idx`."""
        if self.in_memory:
            assert self._imgs is not None
            imgs = self._imgs[idx]
            masks = self._masks[idx] if self._masks is not None else None
            factors = self._factors[idx] if self._factors is not None else None
            return imgs, masks, factors
        # h5py wants increasing, unique indices: read those, then put them back in the asked order.
        uniq, inverse = np.unique(idx, return_inverse=True)
        group = self._handle()[self.split]
        try:
            imgs = group["imgs"][uniq][inverse]
            masks = factors = None
            if self.load_masks:
                masks = group["masks"][uniq][inverse]
                if self.clevr_crop:
                    masks = clevr_crop_masks(masks)
            if self.load_factors:
                factors = np.asarray(group["factors"][uniq][inverse], dtype=np.float32)
        except OSError as exc:
            raise DataError(
                f"error reading {self.path}/{self.split} ({exc}); the file is probably damaged — "
                f"delete it and {get_hint(self.path)}"
            ) from None
        if self.clevr_crop:
            imgs = np.stack([clevr_preprocess_image(img, self.image_hw[0]) for img in imgs])
        return imgs.transpose(0, 3, 1, 2), masks, factors

    def get_batch(self, indices: Any) -> dict[str, torch.Tensor]:
        """Stacked batch for `indices` (no per-item Python work when the split is in memory).

        Returns:
            imgs float32 [B, 3, H, W] in [-1, 1]; masks float32 [B, O, 1, Hm, Wm] 0/255 (with load_masks);
            factors float32 [B, O, F] (with load_factors); index int64 [B].
        """
        idx = self._normalise(indices)
        imgs, masks, factors = self._read_rows(idx)
        out: dict[str, torch.Tensor] = {"imgs": images_to_tensor(imgs, channels_first=True)}
        if masks is not None:
            out["masks"] = masks_to_tensor(masks)
        if factors is not None:
            out["factors"] = torch.from_numpy(np.ascontiguousarray(factors, dtype=np.float32))
        out["index"] = torch.from_numpy(idx.copy())
        return out

    def __repr__(self) -> str:
        mode = "in memory" if self.in_memory else "from disk"
        return (
            f"H5Dataset({self.path}, split={self.split!r}, n={len(self)}, "
            f"image={self.image_hw[0]}x{self.image_hw[1]}, {mode})"
        )


def resolve_split_path(data_cfg: DataConfig, split: str, data_dir: Optional[Path] = None) -> Path:
    """The file holding `split` for a config: `data_dir` (or `data.data_dir`) / train_file or test_file."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(data_dir) if data_dir is not None else Path(data_cfg.data_dir)
    return folder / (data_cfg.train_file if split == "train" else data_cfg.test_file)


def open_split(
    data_cfg: DataConfig,
    split: str,
    data_dir: Optional[Path] = None,
    *,
    in_memory: Optional[bool] = None,
    load_masks: Optional[bool] = None,
    load_factors: Optional[bool] = None,
) -> H5Dataset:
    """The Dataset for one split of a config's data, validated against the config (ClevrTex: a
    `ClevrTexDataset`, which gives the same batches).

    Args:
        data_cfg: the `data` section (file names, image size, CLEVR crop, masks/factors, in_memory).
        split: 'train' or 'test'.
        data_dir: overrides `data_cfg.data_dir` (the CLI's `--data-dir`).
        in_memory / load_masks / load_factors: override the config's values when given.

    Raises:
        DataError: the file is missing, unreadable, not in the layout, or its image size differs from
            `data.image_size`.
    """
    if data_cfg.dataset == "clevrtex":  # PNG folders, not .h5: a `ClevrTexDataset` with the same batches
        from emorl_cli.data.clevrtex import open_clevrtex_split

        return open_clevrtex_split(  # type: ignore[return-value]
            data_cfg, split, data_dir, in_memory=in_memory, load_masks=load_masks, load_factors=load_factors
        )
    path = resolve_split_path(data_cfg, split, data_dir)
    return H5Dataset(
        path,
        split,
        load_masks=data_cfg.load_masks if load_masks is None else load_masks,
        load_factors=data_cfg.load_factors if load_factors is None else load_factors,
        clevr_crop=data_cfg.clevr_crop,
        image_size=data_cfg.image_size,
        in_memory=data_cfg.in_memory if in_memory is None else in_memory,
    )


def check_slots_cover_entities(dataset: H5Dataset, slots: int, dataset_name: str, *, scoring: bool = False) -> None:
    """Masks holding more entities (background included) than the model has slots K.

    Scoring (`scoring=True`, evaluation), any file: FG-ARI and ARI are computed all the same, with a note
    that K slots cannot tell more than K entities apart. Training, for a dataset whose entity count the config
    does not fix (`custom`): a `DataError` asking for a larger K, or — where the masks hold more entities
    than any model may have slots (SIZE_LIMITS) — a note, as the masks play no part in the loss.
    """
    if not scoring and dataset_name in DATASET_ENTITIES:  # fixed by the config (checked there)
        return
    layout = getattr(dataset, "layout", None)  # ClevrTex's folders have no .h5 layout: its config fixes K
    entities = layout.mask_entities if layout is not None else None
    if entities is None or slots >= entities:
        return
    held = f"{dataset.path} holds up to {entities} entities per image in '{dataset.split}/masks' (background included)"
    if scoring:
        log.warning(
            "%s but the model has %d slots: FG-ARI and ARI are scored all the same, and no image with more than "
            "%d objects besides the background can score 1",
            held,
            slots,
            slots,
        )
        return
    limit = SIZE_LIMITS["K"][0]
    if entities > limit:
        log.warning("%s, more than the %d slots a model may have; training with model.K=%d", held, limit, slots)
        return
    raise DataError(
        f"{held} but the model has model.K={slots} slots; set model.K ≥ {entities}, e.g. --set model.K={entities}"
    )


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    num_workers: int = 0,
    seed: Optional[int] = None,
    sampler: Optional[Any] = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader that fetches each batch with one `get_batch` call (no per-item collation).

    Works with `accelerator.prepare` (a plain batch_size/sampler DataLoader). `seed` fixes the shuffle order.
    Workers (num_workers > 0) each open the file themselves when the split is read from disk.
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate_batch,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def measure_loader_throughput(
    path: Union[str, Path],
    split: str,
    batch_size: int,
    n_batches: int,
    *,
    load_masks: bool = True,
    num_workers: int = 0,
    in_memory: bool = True,
    clevr_crop: bool = False,
    image_size: Optional[int] = None,
) -> float:
    """Images per second a shuffled `make_dataloader` delivers for one split (file loading not timed).

    Iterates `n_batches` batches (cycling through the split if it is shorter) and returns images / second.
    """
    if batch_size <= 0 or n_batches <= 0:
        raise DataError(f"batch_size and n_batches must be positive, got {batch_size} and {n_batches}")
    dataset = H5Dataset(
        path,
        split,
        load_masks=load_masks,
        clevr_crop=clevr_crop,
        image_size=image_size,
        in_memory=in_memory,
    )
    loader = make_dataloader(dataset, batch_size, shuffle=True, num_workers=num_workers, seed=0)
    images = 0
    done = 0
    start = time.perf_counter()
    while done < n_batches:
        for batch in loader:
            images += int(batch["imgs"].shape[0])
            done += 1
            if done >= n_batches:
                break
    elapsed = time.perf_counter() - start
    dataset.close()
    return images / max(elapsed, 1e-9)
