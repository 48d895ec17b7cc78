"""`emorl eval ari` on ClevrTex: the benchmark's ARI, FG-ARI, mIoU and MSE (plus KL), per variant.

Shape legend: B images in a batch, K slots, O = 11 ground-truth entities, H×W pixels.

Each variant's test images (full, pbg, vbg, grassbg, camo: the first 10 %; outd: all) go through the model
with the final-stage masks and reconstruction scored by `clevrtex_metrics`; results.json holds, per variant,
each metric's mean (what the reference reports) with its std over images, and per_image_{variant}.csv one
row per image. Sharded over processes like `run_ari_eval`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from emorl_cli.config import Config
from emorl_cli.data.clevrtex import ClevrTexDataset, open_clevrtex_split
from emorl_cli.errors import EmorlError
from emorl_cli.evaluate.ari import true_masks_to_labels
from emorl_cli.evaluate.ari_report import (
    per_image_csv,
    per_image_rows,
    process_rank,
    provenance,
    sharded_records,
    summarize,
)
from emorl_cli.evaluate.clevrtex_metrics import clevrtex_aris, clevrtex_miou, summed_squared_error
from emorl_cli.evaluate.runner import model_device
from emorl_cli.evaluate.session import LoadedModel
from emorl_cli.files import atomic_write_json, atomic_write_text

CLEVRTEX_METRICS = ("ari", "fg_ari", "miou", "mse", "kl")
DEFINITIONS = {
    "ari": "adjusted Rand index over all pixels (sklearn's adjusted_rand_score)",
    "fg_ari": "ARI over the pixels of the objects (label ≠ 0); 1 for an image without them",
    "miou": "Hungarian slot↔object matching on IoU over max(K, labels) ids; matched IoUs, background included, "
    "summed and divided by the pairs in which the object or its slot is non-empty",
    "mse": "squared error of the reconstruction in [0, 1], summed over pixels and channels",
    "kl": "KL of the final posterior, summed over slots (EfficientMORL only)",
}


@dataclass
class ClevrTexReport:
    """Per variant: summary (metric → mean/std/n over images) and per-image rows; where they were written."""

    summaries: dict[str, dict[str, dict[str, float]]]
    per_image: dict[str, list[dict[str, Any]]]
    results_path: Optional[Path]
    seconds: float


def open_variants(
    cfg: Config,
    variants: Sequence[str],
    *,
    data_dir: Optional[Path] = None,
    data_file: Optional[Path] = None,
    split: str = "test",
) -> dict[str, ClevrTexDataset]:
    """The evaluation split of each variant (the config's test variant when `variants` is empty), with masks.

    `data_file` (the CLI's `--data`) is a variant folder or the folder holding the variant folders;
    otherwise they are looked for in `data_dir` (or `data.data_dir`).
    """
    if cfg.data.dataset != "clevrtex":
        raise EmorlError(f"--variant applies to ClevrTex configs only, this one is for {cfg.data.dataset!r}")
    chosen = list(dict.fromkeys(variants)) or [None]
    datasets = {}
    for variant in chosen:
        dataset = open_clevrtex_split(
            cfg.data, split, data_dir, folder=data_file, variant=variant, load_masks=True, load_factors=False
        )
        datasets[dataset.variant] = dataset
    return datasets


def evaluate_clevrtex(
    model: torch.nn.Module,
    objective: Any,
    batches: Iterable[Mapping[str, Any]],
    *,
    refinement_iters: Optional[int] = None,
    samples: int = 1,
    progress: Optional[Callable[[int], None]] = None,
) -> list[dict[str, Any]]:
    """Per (image, sample) records {"index", "sample", "ari", "fg_ari", "miou", "mse", "kl"} of the final stage.

    Args:
        batches: batch dicts with `imgs` [B,3,H,W] in [-1, 1], `masks` [B,O,1,H,W] 0/255, `index` [B].
    """
    if samples < 1:
        raise EmorlError(f"samples must be ≥ 1, got {samples}")
    device = model_device(model)
    records: list[dict[str, Any]] = []
    for batch in batches:
        images = batch["imgs"].to(device)
        true_labels, _ = true_masks_to_labels(batch["masks"])  # [B,H,W]
        for sample in range(samples):
            with torch.no_grad():
                out = model(images, objective, refinement_iters=refinement_iters)
            masks = out.masks.float().cpu()  # [B,K,1,H,W]
            if tuple(masks.shape[-2:]) != tuple(true_labels.shape[-2:]):
                raise EmorlError(
                    f"the model's masks are {tuple(masks.shape[-2:])} but the ClevrTex masks "
                    f"{tuple(true_labels.shape[-2:])}; set data.image_size to the model's input size"
                )
            pred_labels = masks[:, :, 0].argmax(dim=1)  # [B,H,W]
            ari, fg_ari = clevrtex_aris(true_labels, pred_labels, masks.shape[1])
            miou = clevrtex_miou(true_labels, pred_labels, masks.shape[1])
            mse = summed_squared_error(out.reconstruction, (images + 1) / 2)
            for b in range(images.shape[0]):
                records.append(
                    {
                        "index": int(batch["index"][b]),
                        "sample": sample,
                        "ari": float(ari[b]),
                        "fg_ari": float(fg_ari[b]),
                        "miou": float(miou[b]),
                        "mse": float(mse[b]),
                        "kl": None if out.kl is None else float(out.kl[b]),
                    }
                )
        if progress is not None:
            progress(int(images.shape[0]))
    return records


def run_clevrtex_eval(
    loaded: LoadedModel,
    datasets: Mapping[str, ClevrTexDataset],
    *,
    num_images: Optional[int],
    batch_size: int,
    samples: int,
    refinement_iters: Optional[int],
    seed: int,
    out_dir: Optional[Path],
    accelerator: Any = None,
    progress: Optional[Callable[[int], None]] = None,
) -> ClevrTexReport:
    """Evaluate every variant in `datasets` (the first `num_images` of each); with `accelerator`, sharded.

    Each variant starts from the same seed, so its numbers do not depend on the other variants evaluated.
    """
    rank, world = process_rank(accelerator)
    iters = loaded.refinement_iters(refinement_iters)
    started = time.perf_counter()
    summaries: dict[str, dict[str, dict[str, float]]] = {}
    per_image: dict[str, list[dict[str, Any]]] = {}
    for variant, dataset in datasets.items():
        records = sharded_records(
            evaluate_clevrtex,
            loaded,
            dataset,
            num_images=num_images,
            batch_size=batch_size,
            samples=samples,
            refinement_iters=iters,
            seed=seed,
            accelerator=accelerator,
            progress=progress,
        )
        per_image[variant] = per_image_rows(records, CLEVRTEX_METRICS)
        summaries[variant] = summarize(per_image[variant], CLEVRTEX_METRICS)
    seconds = time.perf_counter() - started
    results_path = None
    if out_dir is not None and rank == 0:
        results_path = Path(out_dir) / "results.json"
        variants = {}
        for variant, dataset in datasets.items():
            csv_path = Path(out_dir) / f"per_image_{variant}.csv"
            atomic_write_text(csv_path, per_image_csv(per_image[variant], CLEVRTEX_METRICS))
            variants[variant] = {
                "metrics": summaries[variant],
                "num_images": len(per_image[variant]),
                "data_folder": str(dataset.path),
                "split": dataset.split,
                "per_image": csv_path.name,
            }
        made = provenance(loaded, samples=samples, refinement_iters=iters, seed=seed, processes=world, seconds=seconds)
        atomic_write_json(
            results_path, {"dataset": "clevrtex", "variants": variants, "definitions": DEFINITIONS, **made}
        )
    return ClevrTexReport(summaries, per_image, results_path, seconds)


__all__ = [
    "CLEVRTEX_METRICS",
    "ClevrTexReport",
    "evaluate_clevrtex",
    "open_variants",
    "run_clevrtex_eval",
]
