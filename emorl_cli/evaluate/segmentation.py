"""Segment pictures with a trained model: per picture its slot masks, label map, components, reconstruction
and slot latents, as numpy arrays.

Shape legend: N pictures, B in a batch, K slots, D latent size, S×S the side the model sees.

Pictures are prepared as the model's dataset was (`data/user_images.py`), run through the model's final
inference stage (L bottom-up layers, then I refinement steps) and returned at the model's resolution S. Every
sample the model draws for a picture comes from a generator of its own, seeded by (seed, its name): a
picture gets the same segmentation whatever batch it is in, so a run split over batches or resumed after
an interruption gives what one uninterrupted pass gives.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, Optional

import numpy as np
import torch

from emorl_cli.data.batches import images_to_tensor
from emorl_cli.data.user_images import PictureSource, Preparation, prepare_picture, read_pictures
from emorl_cli.errors import InputError
from emorl_cli.evaluate.runner import model_device
from emorl_cli.evaluate.session import LoadedModel

__all__ = ["SegmentedImage", "Segmentation", "PictureNoise", "segment_batches"]

Progress = Optional[Callable[[int], None]]  # called with the number of pictures just finished


@dataclass
class SegmentedImage:
    """One picture's segmentation.

    name: the picture's name (a file's stem, `image-000003` for an array).
    image: uint8 [S, S, 3] the picture as the model saw it.
    masks: float32 [K, S, S] each slot's mask (probabilities; they sum to 1 over the slots).
    labels: uint8 [S, S] the slot with the largest mask at each pixel.
    components: float32 [K, 3, S, S] each slot's picture (component means) in [0, 1].
    reconstruction: float32 [3, S, S] Σ_k masks · components, in [0, 1].
    loc, scale: float32 [K, D] the slots' posterior means and standard deviations (Slot Attention: loc holds
        the slots and scale is None).
    preparation: what was done to the picture before the model saw it.
    """

    name: str
    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    components: np.ndarray
    reconstruction: np.ndarray
    loc: np.ndarray
    scale: Optional[np.ndarray]
    preparation: Preparation

    def to_torch(self) -> dict[str, torch.Tensor]:
        """The arrays as torch tensors (sharing their memory), by field name."""
        return _tensors(self)


@dataclass
class Segmentation:
    """The segmentations of N pictures: the fields of `SegmentedImage` stacked along a leading N axis
    (`names` and `preparations` as lists). `result[i]` is picture i's `SegmentedImage`; `len(result)` is N."""

    names: list[str]
    images: np.ndarray  # uint8 [N, S, S, 3]
    masks: np.ndarray  # float32 [N, K, S, S]
    labels: np.ndarray  # uint8 [N, S, S]
    components: np.ndarray  # float32 [N, K, 3, S, S]
    reconstructions: np.ndarray  # float32 [N, 3, S, S]
    loc: np.ndarray  # float32 [N, K, D]
    scale: Optional[np.ndarray]  # float32 [N, K, D] or None
    preparations: list[Preparation]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> SegmentedImage:
        if not -len(self) <= i < len(self):
            raise IndexError(f"picture {i} of {len(self)}")
        return SegmentedImage(
            name=self.names[i],
            image=self.images[i],
            masks=self.masks[i],
            labels=self.labels[i],
            components=self.components[i],
            reconstruction=self.reconstructions[i],
            loc=self.loc[i],
            scale=None if self.scale is None else self.scale[i],
            preparation=self.preparations[i],
        )

    def __iter__(self) -> Iterator[SegmentedImage]:
        return (self[i] for i in range(len(self)))

    def to_torch(self) -> dict[str, torch.Tensor]:
        """The stacked arrays as torch tensors (sharing their memory), by field name."""
        return _tensors(self)

    @staticmethod
    def concat(parts: Sequence[Segmentation]) -> Segmentation:
        """The pictures of several results, in order."""
        if len(parts) == 1:
            return parts[0]
        scale = None if parts[0].scale is None else np.concatenate([p.scale for p in parts])  # type: ignore[misc]
        return Segmentation(
            names=[n for p in parts for n in p.names],
            images=np.concatenate([p.images for p in parts]),
            masks=np.concatenate([p.masks for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            components=np.concatenate([p.components for p in parts]),
            reconstructions=np.concatenate([p.reconstructions for p in parts]),
            loc=np.concatenate([p.loc for p in parts]),
            scale=scale,
            preparations=[q for p in parts for q in p.preparations],
        )


def _tensors(result: Any) -> dict[str, torch.Tensor]:
    out = {}
    for f in fields(result):
        value = getattr(result, f.name)
        if isinstance(value, np.ndarray):
            out[f.name] = torch.from_numpy(value)
    return out


# --------------------------------------------------------------------------------------------- noise


def picture_seed(seed: int, name: str) -> int:
    """The seed of one picture's generator: the run's seed and the picture's name."""
    return (int(seed) * 0x9E3779B1 + zlib.crc32(name.encode("utf-8"))) % (2**63)


class PictureNoise:
    """The model's `noise(shape)` for a batch: rows [B·K, D] in blocks of K, block b drawn from picture b's own
    generator, so a picture's samples do not depend on the batch it is in."""

    def __init__(self, seeds: Sequence[int], device: torch.device):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.device = device

    def __call__(self, shape: Sequence[int]) -> torch.Tensor:
        rows, rest = int(shape[0]), tuple(shape[1:])
        count = len(self.generators)
        if rows % count:
            raise ValueError(f"noise of {rows} rows cannot be split over {count} pictures")
        per = rows // count
        blocks = [torch.randn((per, *rest), generator=g) for g in self.generators]  # [K, D] each
        return torch.cat(blocks).to(self.device)  # [B*K, D]


# --------------------------------------------------------------------------------------------- inference


def _run_batch(
    loaded: LoadedModel, pixels: np.ndarray, names: list[str], refinement_iters: Optional[int], seed: int
) -> dict[str, Optional[np.ndarray]]:
    """Prepared pictures uint8 [B, S, S, 3] → the model's final stage as arrays."""
    device = model_device(loaded.model)
    images = images_to_tensor(pixels).to(device)  # [B, 3, S, S] in [-1, 1]
    noise = PictureNoise([picture_seed(seed, n) for n in names], device)
    with torch.no_grad():
        out = loaded.model(
            images, loaded.objective(), refinement_iters=loaded.refinement_iters(refinement_iters), noise=noise
        )
    masks = out.masks[:, :, 0].float()  # [B, K, S, S]
    scale = out.posterior_scale
    return {
        "masks": masks.cpu().numpy(),
        "labels": masks.argmax(dim=1).to(torch.uint8).cpu().numpy(),  # [B, S, S]
        "components": out.means.float().clamp(0, 1).cpu().numpy(),  # [B, K, 3, S, S]
        "reconstructions": out.reconstruction.float().clamp(0, 1).cpu().numpy(),  # [B, 3, S, S]
        "loc": out.posterior_loc.float().cpu().numpy(),  # [B, K, D]
        "scale": None if scale is None else scale.float().cpu().numpy(),  # [B, K, D]
    }


def check_batch_size(batch_size: int) -> int:
    """A one-line `InputError` unless `batch_size` is a whole number ≥ 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a whole number ≥ 1, got {batch_size!r}")
    return batch_size


def check_refinement_iters(refinement_iters: Optional[int]) -> Optional[int]:
    """A one-line `InputError` unless `refinement_iters` is None or a whole number 0..64."""
    if refinement_iters is None:
        return None
    if isinstance(refinement_iters, bool) or not isinstance(refinement_iters, int) or not 0 <= refinement_iters <= 64:
        raise InputError(f"refinement_iters must be a whole number from 0 to 64, got {refinement_iters!r}")
    return refinement_iters


def segment_batches(
    loaded: LoadedModel,
    sources: Sequence[PictureSource],
    *,
    refinement_iters: Optional[int] = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: Progress = None,
) -> Iterator[Segmentation]:
    """Segment `sources` `batch_size` at a time; yield one `Segmentation` per batch, in order.

    Args:
        loaded: the model (`evaluate.session.load_model`).
        sources: the pictures (`data.user_images.collect_sources` / `sources_from_python`).
        refinement_iters: I (None: the config's test-time I).
        batch_size: pictures per forward pass.
        seed: seeds every picture's generator together with its name.
        progress: called with the pictures finished after each batch.
    """
    check_batch_size(batch_size)
    check_refinement_iters(refinement_iters)
    for start in range(0, len(sources), batch_size):
        chunk = list(sources[start : start + batch_size])
        prepared = [prepare_picture(picture, loaded.cfg.data) for picture in read_pictures(chunk)]
        pixels = np.stack([p for p, _ in prepared])  # [B, S, S, 3]
        names = [s.name for s in chunk]
        arrays = _run_batch(loaded, pixels, names, refinement_iters, seed)
        yield Segmentation(names=names, images=pixels, preparations=[q for _, q in prepared], **arrays)  # type: ignore[arg-type]
        if progress is not None:
            progress(len(chunk))


# --------------------------------------------------------------------------------------------- statistics


def slot_statistics(image: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> list[dict[str, Any]]:
    """Per slot of one picture, over the pixels the label map gives it (at the model's resolution S):

    slot: k; area: pixel count; area_fraction: of the S×S pixels; mask_sum: Σ of its soft mask (the area it
    claims in expectation); mean_colour: [R, G, B] 0..255 mean of the picture over its pixels (None when it
    has none); bbox: [x0, y0, x1, y1] of its pixels, x1 and y1 exclusive (None when it has none).

    Args:
        image: uint8 [S, S, 3]; labels: [S, S] slot indices; masks: [K, S, S].
    """
    total = labels.size
    stats = []
    for k in range(masks.shape[0]):
        where = labels == k  # [S, S]
        area = int(where.sum())
        entry: dict[str, Any] = {
            "slot": k,
            "area": area,
            "area_fraction": area / total,
            "mask_sum": float(masks[k].sum()),
            "mean_colour": None,
            "bbox": None,
        }
        if area:
            rows, cols = np.nonzero(where)
            entry["mean_colour"] = [float(v) for v in image[where].mean(axis=0)]  # [3]
            entry["bbox"] = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
        stats.append(entry)
    return stats
