"""What every evaluation command needs: a model from a checkpoint, its config, the test images, sharding."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from emorl_cli.checkpoint import load_for_inference
from emorl_cli.config import Config, load_config
from emorl_cli.data.dataset import H5Dataset, check_slots_cover_entities, resolve_split_path
from emorl_cli.data.h5 import masks_in_split
from emorl_cli.data.manifest import hash_file
from emorl_cli.errors import CheckpointError, DataError
from emorl_cli.model import Objective


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file (recorded with every result)."""
    return hash_file(Path(path), "sha256")


@dataclass
class LoadedModel:
    """A model ready for inference, with the config and GECO state it was trained with."""

    model: torch.nn.Module
    cfg: Config
    geco_state: Optional[dict[str, Any]]
    checkpoint: Optional[Path]  # None for a model in memory (evaluation during training)

    def objective(self) -> Optional[Objective]:
        """The original evaluation's objective: GECO-weighted when the run used GECO, else the ELBO; the
        original evaluates with kl_beta = 1 whatever the run trained with."""
        if self.cfg.model.kind != "emorl":
            return None
        if self.cfg.geco.enabled and self.geco_state is not None:
            return Objective.geco(self.geco_state, kl_beta=1.0)
        return Objective.elbo(1.0)

    def refinement_iters(self, override: Optional[int]) -> Optional[int]:
        """I at test time: the override, else eval.refinement_iters, else model.refinement_iters."""
        if self.cfg.model.kind != "emorl":
            return None
        return override if override is not None else self.cfg.test_refinement_iters()


def load_model(
    checkpoint: Path, config: Optional[str] = None, overrides: Optional[list[str]] = None, device: str = "cpu"
) -> LoadedModel:
    """Load an emorl checkpoint (config inside) or an original `.pth` (needs `config`)."""
    cfg = load_config(config, overrides) if config is not None else None
    model, cfg, geco_state = load_for_inference(Path(checkpoint), cfg)
    check_finite(model, geco_state, Path(checkpoint))
    model.to(device).eval()
    return LoadedModel(model=model, cfg=cfg, geco_state=geco_state, checkpoint=Path(checkpoint))


def check_finite(model: torch.nn.Module, geco_state: Optional[dict[str, Any]], source: Path) -> None:
    """Refuse a model with NaN or infinite weights (or GECO state): every figure it gave would be NaN, and
    the metrics would be skipped image by image rather than said to be meaningless once.

    Raises:
        CheckpointError: naming how many tensors are not finite, the first of them, and what to do.
    """
    tensors = [(name, t) for name, t in model.state_dict().items() if t.is_floating_point()]
    for key, value in (geco_state or {}).items():
        if torch.is_tensor(value) or isinstance(value, float):
            tensors.append((f"geco.{key}", torch.as_tensor(value)))
    bad = [name for name, t in tensors if not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(
            f"{source} holds NaN or infinite values in {len(bad)} of its {len(tensors)} tensors (first: {bad[0]}); "
            "the training diverged before this checkpoint — evaluate an earlier one, or retrain with a lower "
            "training.lr"
        )


def open_eval_split(
    cfg: Config,
    *,
    data_dir: Optional[Path] = None,
    data_file: Optional[Path] = None,
    split: str = "test",
    load_factors: Optional[bool] = None,
    need_masks: bool = True,
) -> H5Dataset:
    """The evaluation images: `--data FILE` wins over `--data-dir DIR` and the config's folder.

    With `need_masks` (ARI, DCI) a file without ground-truth masks is a `DataError` saying so; without it
    (pictures, activeness) masks are loaded when the file has them. For a dataset whose entity count the
    config does not fix (`custom`), K is checked against the entities the file's masks hold. For ClevrTex
    `--data` is a variant folder (or the folder holding the config's test variant); it always has masks.
    """
    if cfg.data.dataset == "clevrtex":
        from emorl_cli.data.clevrtex import open_clevrtex_split

        return open_clevrtex_split(  # type: ignore[return-value]
            cfg.data, split, data_dir, folder=data_file, load_masks=True, load_factors=load_factors
        )
    if data_file is not None:
        if not Path(data_file).is_file():
            raise DataError(f"data file {data_file} does not exist; give an .h5 file in the Zenodo layout")
        path = Path(data_file)
    else:
        path = resolve_split_path(cfg.data, split, data_dir)
    has_masks = masks_in_split(path, split) if path.is_file() else None  # a missing file: H5Dataset explains
    if need_masks and has_masks is False:
        raise DataError(
            f"{path} holds no ground-truth masks in its '{split}' group, so FG-ARI, ARI and DCI cannot be computed "
            "on it (they compare the model's slots with ground-truth masks); import label masks with "
            "`emorl data import DIR --masks MASK_DIR --out FILE.h5` to evaluate them — `emorl viz` and "
            "`emorl gifs` work without masks"
        )
    dataset = H5Dataset(
        path,
        split,
        load_masks=need_masks or bool(has_masks),
        load_factors=cfg.data.load_factors if load_factors is None else load_factors,
        clevr_crop=cfg.data.clevr_crop,
        image_size=cfg.data.image_size,
        in_memory=cfg.data.in_memory,
    )
    check_slots_cover_entities(dataset, cfg.model.K, cfg.data.dataset, scoring=True)
    return dataset


def shard_indices(total: int, num_images: Optional[int], rank: int, world_size: int) -> list[int]:
    """This process's image indices among the first `num_images` (round-robin, disjoint, covering all)."""
    count = total if num_images is None else min(total, num_images)
    return list(range(rank, count, world_size))


def batches_of(dataset: H5Dataset, indices: list[int], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Stacked batches of `indices`, in order."""
    for start in range(0, len(indices), batch_size):
        yield dataset.get_batch(indices[start : start + batch_size])
