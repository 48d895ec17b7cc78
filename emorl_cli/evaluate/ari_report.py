"""`emorl eval ari` as a library call: batched, sharded over processes, written to results.json/per_image.csv."""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from emorl_cli import __version__
from emorl_cli.config import config_to_dict
from emorl_cli.data.dataset import H5Dataset
from emorl_cli.evaluate.runner import METRICS, evaluate_ari, model_device
from emorl_cli.evaluate.session import LoadedModel, batches_of, file_sha256, shard_indices
from emorl_cli.files import atomic_write_json, atomic_write_text, ensure_writable_folder

STOCHASTIC_NOTE = (
    "inference is stochastic (posterior samples); with samples > 1 every image is inferred that many times "
    "with fresh noise and its per-image mean is used, 'sample_std' is the mean over images of the per-image std"
)


@dataclass
class AriReport:
    """Summary (metric → mean/std/n over images), per-image rows and where they were written."""

    summary: dict[str, dict[str, float]]
    per_image: list[dict[str, Any]]
    results_path: Optional[Path]
    per_image_path: Optional[Path]
    seconds: float


def per_image_rows(records: list[dict[str, Any]], metrics: Sequence[str] = METRICS) -> list[dict[str, Any]]:
    """Group (image, sample) records by image: each metric's mean and std over samples, sorted by index."""
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    seen: set[tuple[int, int]] = set()
    for record in records:
        key = (record["index"], record["sample"])
        if key not in seen:  # a gather may repeat padded items
            seen.add(key)
            grouped[record["index"]].append(record)
    rows = []
    for index in sorted(grouped):
        row: dict[str, Any] = {"index": index, "samples": len(grouped[index])}
        for metric in metrics:
            values = [r[metric] for r in grouped[index] if r.get(metric) is not None]
            if values:
                row[metric] = float(np.mean(values))
                row[f"{metric}_std"] = float(np.std(values))
        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]], metrics: Sequence[str] = METRICS) -> dict[str, dict[str, Any]]:
    """metric → mean, std (over images, NaNs skipped), n, skipped, and sample_std (mean per-image std over
    samples). With no finite value, mean, std and sample_std are None (null in results.json, which is strict
    JSON); `skipped` counts the images whose value was NaN (FG-ARI of an image without foreground pixels)."""
    summary: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        values = np.array([r[metric] for r in rows if metric in r], dtype=np.float64)
        if values.size == 0:
            continue
        finite = values[np.isfinite(values)]
        stds = np.array([r[f"{metric}_std"] for r in rows if metric in r], dtype=np.float64)
        stds = stds[np.isfinite(stds)]
        summary[metric] = {
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std()) if finite.size else None,
            "n": int(finite.size),
            "skipped": int(values.size - finite.size),
            "sample_std": float(stds.mean()) if stds.size else None,
        }
    return summary


def format_stats(stats: dict[str, Any]) -> str:
    """'0.8123 ± 0.0412', with '(3 images skipped)' when some had no value, or 'n/a (all 16 images skipped)'."""
    if stats["mean"] is None:
        return f"n/a (all {stats['skipped']} images skipped)"
    text = f"{stats['mean']:.4g} ± {stats['std']:.3g}"
    skipped = stats.get("skipped", 0)
    return text + (f" ({skipped} image{'s' if skipped != 1 else ''} skipped)" if skipped else "")


def per_image_csv(rows: list[dict[str, Any]], metrics: Sequence[str] = METRICS) -> str:
    """The per-image rows as CSV text: index, samples, then each metric and its std over samples."""
    columns = ["index", "samples"] + [c for m in metrics for c in (m, f"{m}_std") if any(c in r for r in rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


Evaluator = Callable[..., list[dict[str, Any]]]  # (model, objective, batches, *, refinement_iters, samples, progress)


def process_rank(accelerator: Any) -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) without an accelerator."""
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


def sharded_records(
    evaluate: Evaluator,
    loaded: LoadedModel,
    dataset: Any,
    *,
    num_images: Optional[int],
    batch_size: int,
    samples: int,
    refinement_iters: Optional[int],
    seed: int,
    accelerator: Any = None,
    progress: Optional[Callable[[int], None]] = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Per-(image, sample) records of `evaluate` over the first `num_images` of `dataset`: this process's
    share when `accelerator` runs several, gathered so that every process returns all of them.

    The posterior samples are seeded with `seed + rank` inside a forked RNG (the caller's random state is
    left as it was); `options` go to `evaluate`.
    """
    rank, world = process_rank(accelerator)
    device = model_device(loaded.model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed + rank)
        records = evaluate(
            loaded.model,
            loaded.objective(),
            batches_of(dataset, shard_indices(len(dataset), num_images, rank, world), batch_size),
            refinement_iters=refinement_iters,
            samples=samples,
            progress=progress,
            **options,
        )
    if world > 1:
        from accelerate.utils import gather_object

        records = gather_object(records)
    return records


def provenance(
    loaded: LoadedModel, *, samples: int, refinement_iters: Optional[int], seed: int, processes: int, seconds: float
) -> dict[str, Any]:
    """What every results.json records besides its numbers: how they were made and from what."""
    return {
        "samples": samples,
        "refinement_iters": refinement_iters,
        "seed": seed,
        "note": STOCHASTIC_NOTE,
        "checkpoint": str(loaded.checkpoint),
        "checkpoint_sha256": file_sha256(loaded.checkpoint),
        "processes": processes,
        "seconds": seconds,
        "emorl_version": __version__,
        "config": config_to_dict(loaded.cfg),
    }


def run_ari_eval(
    loaded: LoadedModel,
    dataset: H5Dataset,
    *,
    num_images: Optional[int],
    batch_size: int,
    samples: int,
    refinement_iters: Optional[int],
    seed: int,
    out_dir: Optional[Path],
    accelerator: Any = None,
    progress: Optional[Callable[[int], None]] = None,
    require_masks: bool = True,
) -> AriReport:
    """Evaluate FG-ARI, ARI, MSE, KL and NLL per image; with `accelerator`, shard over its processes.

    The posterior samples are seeded with `seed + rank`, inside a forked RNG: the caller's random state is
    left as it was (training evaluates this way between steps). With `require_masks` False a split without
    masks is scored without ARI.
    """
    rank, world = process_rank(accelerator)
    if out_dir is not None and rank == 0:
        ensure_writable_folder(out_dir, "output folder")  # before the evaluation, not after it
    iters = loaded.refinement_iters(refinement_iters)
    started = time.perf_counter()
    records = sharded_records(
        evaluate_ari,
        loaded,
        dataset,
        num_images=num_images,
        batch_size=batch_size,
        samples=samples,
        refinement_iters=iters,
        seed=seed,
        accelerator=accelerator,
        progress=progress,
        require_masks=require_masks,
    )
    rows = per_image_rows(records)
    summary = summarize(rows)
    seconds = time.perf_counter() - started
    results_path = per_image_path = None
    if out_dir is not None and rank == 0:
        results_path, per_image_path = Path(out_dir) / "results.json", Path(out_dir) / "per_image.csv"
        made = provenance(loaded, samples=samples, refinement_iters=iters, seed=seed, processes=world, seconds=seconds)
        atomic_write_json(
            results_path,
            {
                "metrics": summary,
                "num_images": len(rows),
                "data_file": str(dataset.path),
                "split": dataset.split,
                **made,
            },
        )
        atomic_write_text(per_image_path, per_image_csv(rows))
    return AriReport(summary, rows, results_path, per_image_path, seconds)
