"""What every dataset shares, whatever its files: the batched base class (`get_batch` first, items and
DataLoader batches from it), the conversion of stored uint8 images and masks to tensors, and the memory
budget that decides whether a split is held in memory.

Shape legend: B images in a batch, O mask entities, H×W an image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

IndexLike = Union[int, np.integer]
# Share of the available memory one split may take when held in memory.
MEMORY_FRACTION = 0.5


def available_memory_bytes() -> Optional[int]:
    """Memory available to this process now (Linux MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# uint8 value → float32 exactly as the original computes it ((v / 255.) * 2 - 1 in float64, then float32).
_TO_UNIT_RANGE = ((np.arange(256, dtype=np.float64) / 255.0) * 2.0 - 1.0).astype(np.float32)


def images_to_tensor(imgs: np.ndarray, channels_first: bool = False) -> torch.Tensor:
    """Images [B, H, W, 3] (or [B, 3, H, W] with `channels_first`), 0..255 → contiguous float32
    [B, 3, H, W] in [-1, 1]. Done in numpy: a lookup for uint8 input, no torch kernels (which contend for
    the cores with the training loop)."""
    chw = imgs if channels_first else imgs.transpose(0, 3, 1, 2)
    chw = np.ascontiguousarray(chw)  # [B, 3, H, W]
    if chw.dtype == np.uint8:
        return torch.from_numpy(np.take(_TO_UNIT_RANGE, chw))
    return torch.from_numpy(((chw.astype(np.float64) / 255.0) * 2.0 - 1.0).astype(np.float32))


def masks_to_tensor(masks: np.ndarray) -> torch.Tensor:
    """[B, O, H, W, 1] (0/255) → contiguous float32 [B, O, 1, H, W], values kept 0/255."""
    b, o, h, w, _ = masks.shape
    return torch.from_numpy(np.ascontiguousarray(masks).reshape(b, o, 1, h, w).astype(np.float32))


class StackedBatch(Sequence):
    """What `H5Dataset.__getitems__` returns: the stacked batch, viewable as a sequence of items.

    `collate_batch` hands `.data` through untouched (no per-item work). A DataLoader built with the default
    collate function still gets correct batches (it restacks the items), only slower.
    """

    def __init__(self, data: dict[str, torch.Tensor]):
        self.data = data

    def __len__(self) -> int:
        return int(self.data["index"].shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        item: dict[str, Any] = {k: v[i] for k, v in self.data.items() if k != "index"}
        item["index"] = int(self.data["index"][i])
        return item


def collate_batch(batch: Any) -> Any:
    """Collate function for `H5Dataset`: passes a `StackedBatch` through, else torch's default_collate."""
    if isinstance(batch, StackedBatch):
        return batch.data
    return default_collate(batch)


class BatchedDataset(Dataset):
    """A map-style Dataset whose one job is `get_batch(indices)`; items and DataLoader batches come from it.

    Subclasses set `path` and `split` and implement `__len__` and `get_batch`.
    """

    path: Path
    split: str

    def get_batch(self, indices: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _normalise(self, indices: Any) -> np.ndarray:
        """Indices as int64 [B], negative ones counted from the end; out of range is an IndexError."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)  # type: ignore[arg-type]
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"index out of range for {n} images in {self.path}/{self.split}")
        return idx

    def __getitems__(self, indices: list[int]) -> StackedBatch:
        """Batched fetch used by torch's DataLoader (one call per batch)."""
        return StackedBatch(self.get_batch(indices))

    def __getitem__(self, i: IndexLike) -> dict[str, Any]:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}; use get_batch for many indices")
        batch = self.get_batch([int(i)])
        item: dict[str, Any] = {k: v[0] for k, v in batch.items() if k != "index"}
        item["index"] = int(batch["index"][0])
        return item
