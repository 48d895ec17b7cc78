"""What every evaluation command needs: a model from a checkpoint, its config, the test images, sharding."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from emorl_cli.checkpoint import load_for_inference
from emorl_cli.config import Config, load_config
from emorl_cli.data.dataset import H5Dataset, open_split
from emorl_cli.data.manifest import hash_file
from emorl_cli.errors import DataError
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
    checkpoint: Path

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
    model.to(device).eval()
    return LoadedModel(model=model, cfg=cfg, geco_state=geco_state, checkpoint=Path(checkpoint))


def open_eval_split(
    cfg: Config,
    *,
    data_dir: Optional[Path] = None,
    data_file: Optional[Path] = None,
    split: str = "test",
    load_factors: Optional[bool] = None,
) -> H5Dataset:
    """The evaluation images with masks: `--data FILE` wins over `--data-dir DIR` and the config's folder.

    For ClevrTex `--data` is a variant folder (or the folder holding the config's test variant).
    """
    if cfg.data.dataset == "clevrtex":
        from emorl_cli.data.clevrtex import open_clevrtex_split

        return open_clevrtex_split(  # type: ignore[return-value]
            cfg.data, split, data_dir, folder=data_file, load_masks=True, load_factors=load_factors
        )
    if data_file is not None:
        if not Path(data_file).is_file():
            raise DataError(f"data file {data_file} does not exist; give an .h5 file in the Zenodo layout")
        return H5Dataset(
            data_file,
            split,
            load_masks=True,
            load_factors=cfg.data.load_factors if load_factors is None else load_factors,
            clevr_crop=cfg.data.clevr_crop,
            image_size=cfg.data.image_size,
            in_memory=cfg.data.in_memory,
        )
    return open_split(cfg.data, split, data_dir, load_masks=True, load_factors=load_factors)


def shard_indices(total: int, num_images: Optional[int], rank: int, world_size: int) -> list[int]:
    """This process's image indices among the first `num_images` (round-robin, disjoint, covering all)."""
    count = total if num_images is None else min(total, num_images)
    return list(range(rank, count, world_size))


def batches_of(dataset: H5Dataset, indices: list[int], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Stacked batches of `indices`, in order."""
    for start in range(0, len(indices), batch_size):
        yield dataset.get_batch(indices[start : start + batch_size])
