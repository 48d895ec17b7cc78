"""Inference with its stages kept, one record per image: what `emorl viz` and the training figure draw.

Shape legend: B images in a batch, K slots, C×H×W an image, O ground-truth entities.

The model contract is that of `emorl_cli.model`: `model(images, objective, refinement_iters=I, record=True)`
→ `ModelOutput` whose `trace` holds one `StageRecord` per stage (the L bottom-up layers, then the I
refinement steps). Batches are the data layer's dicts (`imgs` [B,3,H,W] in [-1,1], `index` [B], and
`masks` [B,O,1,Hm,Wm] when the file has them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from emorl_cli.errors import EmorlError
from emorl_cli.evaluate.ari import UpsampleMode
from emorl_cli.evaluate.runner import Progress, image_metrics, model_device, take_images

__all__ = ["ImageRecord", "stage_name", "stages_of_image", "infer_images"]

Batch = Mapping[str, Any]


def stage_name(record: Any) -> str:
    """Row title of a trace record: 'layer l' (1-based, bottom-up), 'refine i' or 'initial'."""
    if record.kind == "layer":
        return f"layer {record.index + 1}"
    if record.kind == "refinement":
        return f"refine {record.index}"
    return str(record.kind)


def stages_of_image(trace: list[Any], b: int) -> list[dict[str, Any]]:
    """Image b's stages from a model trace, one dict per stage: `name`, `reconstruction` [C,H,W],
    `masks` [K,H,W], `means` [K,C,H,W] and `attention` [K,H,W] (None where the stage has none)."""
    stages = []
    for record in trace:
        means = record.means[b].float().cpu()  # [K,C,H,W]
        masks = record.masks[b, :, 0].float().cpu()  # [K,H,W]
        attention = None if record.attention is None else record.attention[b, :, 0].float().cpu()
        stages.append(
            {
                "name": stage_name(record),
                "reconstruction": (means * masks[:, None]).sum(0),  # [C,H,W]
                "masks": masks,
                "means": means,
                "attention": attention,
            }
        )
    return stages


@dataclass
class ImageRecord:
    """One image through inference.

    index: the image's index in its split.
    image: [C,H,W] the input in [0,1].
    stages: the rows of its stage figure (`stages_of_image`).
    metrics: FG-ARI and ARI (`fg_ari`, `ari`; when the split has masks), `mse`, and `kl`, `nll` when the
        model has them (not Slot Attention).
    arrays: named arrays of this image, as stored in viz.npz: `images`, `index`, `true_masks` (with masks),
        and per stage s `stage{s}_{kind}{i}_means` / `_masks` / `_attention`, in the model's dtypes.
    """

    index: int
    image: torch.Tensor
    stages: list[dict[str, Any]]
    metrics: dict[str, float]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _batch_arrays(batch: Batch, trace: list[Any]) -> dict[str, np.ndarray]:
    """A batch's images, indices, true masks and per-stage tensors as arrays with a leading batch axis."""
    parts = {"images": (batch["imgs"].float().cpu() + 1.0) / 2.0, "index": batch["index"]}
    if "masks" in batch:
        parts["true_masks"] = batch["masks"]
    for s, record in enumerate(trace):
        name = f"stage{s}_{record.kind}{record.index}"
        parts[f"{name}_means"] = record.means
        parts[f"{name}_masks"] = record.masks
        if record.attention is not None:
            parts[f"{name}_attention"] = record.attention
    return {name: tensor.detach().cpu().numpy() for name, tensor in parts.items()}


def infer_images(
    model: torch.nn.Module,
    objective: Any,
    batches: Iterable[Batch],
    *,
    refinement_iters: Optional[int] = None,
    num_images: int = 10,
    upsample_mode: UpsampleMode = "bicubic",
    progress: Progress = None,
) -> Iterator[ImageRecord]:
    """Run the model with its stages recorded on the first `num_images` images; yield one record per image.

    `progress` is called with a batch's image count once all its records have been taken.
    """
    device = model_device(model)
    for batch in take_images(batches, num_images):
        images = batch["imgs"].to(device)
        with torch.no_grad():
            out = model(images, objective, refinement_iters=refinement_iters, record=True)
        if not out.trace:
            raise EmorlError("the model returned no inference trace; it must support record=True")
        arrays = _batch_arrays(batch, out.trace)
        metrics = image_metrics(out, batch.get("masks"), upsample_mode)
        for b in range(images.shape[0]):
            yield ImageRecord(
                index=int(batch["index"][b]),
                image=(images[b].float().cpu() + 1.0) / 2.0,  # [C,H,W] in [0,1]
                stages=stages_of_image(out.trace, b),
                metrics={name: value for name, value in metrics[b].items() if value is not None},
                arrays={name: array[b] for name, array in arrays.items()},
            )
        if progress is not None:
            progress(int(images.shape[0]))
