"""`emorl eval dci` and `emorl eval activeness` as library calls writing dci.json / activeness.json."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch

from emorl_cli import __version__
from emorl_cli.data.dataset import H5Dataset
from emorl_cli.evaluate.runner import collect_codes, evaluate_dci
from emorl_cli.evaluate.session import LoadedModel, batches_of, file_sha256
from emorl_cli.evaluate.traversals import latent_activeness
from emorl_cli.files import atomic_write_json, ensure_writable_folder


def _provenance(loaded: LoadedModel, dataset: H5Dataset, iters: Optional[int], seed: int) -> dict[str, Any]:
    return {
        "checkpoint": str(loaded.checkpoint),
        "checkpoint_sha256": file_sha256(loaded.checkpoint),
        "data_file": str(dataset.path),
        "split": dataset.split,
        "refinement_iters": iters,
        "seed": seed,
        "emorl_version": __version__,
    }


def run_dci_eval(
    loaded: LoadedModel,
    dataset: H5Dataset,
    *,
    num_images: int,
    batch_size: int,
    refinement_iters: Optional[int],
    seed: int,
    estimators: int,
    out_dir: Path,
    min_iou: float = 0.1,
    min_pixels: int = 50,
    progress: Optional[Callable[[int], None]] = None,
) -> tuple[dict[str, Any], Path]:
    """Codes of matched slots → one gradient-boosted model per factor → DCI scores, saved as dci.json."""
    ensure_writable_folder(out_dir, "output folder")  # before the evaluation, not after it
    torch.manual_seed(seed)
    iters = loaded.refinement_iters(refinement_iters)
    codes = collect_codes(
        loaded.model,
        loaded.objective(),
        batches_of(dataset, list(range(num_images)), batch_size),
        dataset=loaded.cfg.data.dataset,
        refinement_iters=iters,
        min_pixels=min_pixels,
        min_iou=min_iou,
        progress=progress,
    )
    scores = evaluate_dci(codes, seed=seed, n_estimators=estimators)
    path = Path(out_dir) / "dci.json"
    atomic_write_json(
        path,
        {
            **scores,
            **_provenance(loaded, dataset, iters, seed),
            "estimators": estimators,
            "min_iou": min_iou,
            "min_pixels": min_pixels,
        },
    )
    return scores, path


def run_activeness(
    loaded: LoadedModel,
    dataset: H5Dataset,
    *,
    num_images: int,
    batch_size: int,
    refinement_iters: Optional[int],
    seed: int,
    out_dir: Path,
) -> tuple[dict[str, Any], Path]:
    """Latent ranges (min/max of posterior samples) and per-dimension activeness, saved as activeness.json."""
    ensure_writable_folder(out_dir, "output folder")
    torch.manual_seed(seed)
    iters = loaded.refinement_iters(refinement_iters)
    ranges, _, activeness = latent_activeness(
        loaded.model,
        loaded.objective(),
        batches_of(dataset, list(range(num_images)), batch_size),
        refinement_iters=iters,
        num_images=num_images,
        seed=seed,
    )
    result = {
        "activeness": activeness.tolist(),
        "ranking": torch.argsort(activeness, descending=True).tolist(),
        "latent_min": ranges[0].cpu().tolist(),
        "latent_max": ranges[1].cpu().tolist(),
        "num_images": num_images,
        **_provenance(loaded, dataset, iters, seed),
    }
    path = Path(out_dir) / "activeness.json"
    atomic_write_json(path, result)
    return result, path
