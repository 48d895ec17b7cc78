"""Known datasets: the .h5 file names the configs use, their stored image size, entities and factor columns.

The file names are those of the EfficientMORL Zenodo record (10.5281/zenodo.4895643) that the original
configs point at. `emorl data synth` writes files with the same names so a config works unchanged with
`--data-dir` pointing at synthetic data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from emorl_cli.config import CLEVRTEX_VARIANTS, DATASET_ENTITIES

ZENODO_RECORD_ID = "4895643"
ZENODO_BASE_URL = "https://zenodo.org"
MANIFEST_NAME = "emorl-manifest.json"

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """What emorl knows about one dataset.

    Attributes:
        name: the config's `data.dataset` value.
        train_file / test_file: file names inside the data folder (groups `train` / `test`).
        stored_size: (H, W) of the images as stored in the file.
        entities: mask entities per image, background (entity 0) included.
        factor_names: columns of `factors [N, O, F]` (colour may take 3 columns r, g, b).
        synthesizable: `emorl data synth` can generate a stand-in.
    """

    name: str
    train_file: str
    test_file: str
    stored_size: tuple[int, int]
    entities: int
    factor_names: tuple[str, ...]
    synthesizable: bool = False

    def file_for(self, split: str) -> str:
        """The file name holding `split` ('train' or 'test')."""
        return self.train_file if split == "train" else self.test_file


TETROMINOES_FACTORS = ("x", "y", "shape", "r", "g", "b", "visibility")
MULTI_DSPRITES_FACTORS = ("x", "y", "shape", "scale", "orientation", "r", "g", "b", "visibility")
CLEVR_FACTORS = ("x", "y", "z", "rotation", "size", "material", "shape", "colour", "visibility")

DATASETS: dict[str, DatasetSpec] = {
    "tetrominoes": DatasetSpec(
        "tetrominoes",
        "tetrominoes.h5",
        "tetrominoes_test.h5",
        (35, 35),
        DATASET_ENTITIES["tetrominoes"],
        TETROMINOES_FACTORS,
        synthesizable=True,
    ),
    "multi_dsprites": DatasetSpec(
        "multi_dsprites",
        "multi_dsprites_colored_on_grayscale.h5",
        "multi_dsprites_colored_on_grayscale_test.h5",
        (64, 64),
        DATASET_ENTITIES["multi_dsprites"],
        MULTI_DSPRITES_FACTORS,
        synthesizable=True,
    ),
    "clevr6": DatasetSpec(
        "clevr6",
        "clevr6_with_masks_train.h5",
        "clevr6_with_masks_and_factors_test.h5",
        (240, 320),
        DATASET_ENTITIES["clevr6"],
        CLEVR_FACTORS,
    ),
    "clevr6_128": DatasetSpec(
        "clevr6_128",
        "clevr10_with_masks_and_factors_train.h5",
        "clevr10_with_masks_test.h5",
        (240, 320),
        DATASET_ENTITIES["clevr6_128"],
        CLEVR_FACTORS,
    ),
}

# ClevrTex (Karazija et al., 2021, variants CLEVRTEX_VARIANTS) is read in its published folder layout.
CLEVRTEX_BASE_URL = "https://thor.robots.ox.ac.uk/datasets/clevrtex"
# The archives the ClevrTex project page links, per variant; each unpacks to `clevrtex_{variant}/`. No
# checksums are published: each archive is checked by reading it whole (gzip CRC-32, tar header checksums).
CLEVRTEX_ARCHIVES: dict[str, tuple[str, ...]] = {
    "full": tuple(f"clevrtex_full_part{i}.tar.gz" for i in range(1, 6)),
    **{variant: (f"clevrtex_{variant}.tar.gz",) for variant in CLEVRTEX_VARIANTS if variant != "full"},
}


def clevrtex_folder_name(variant: str) -> str:
    """The folder a ClevrTex variant unpacks to (`clevrtex_full`, `clevrtex_camo`, …)."""
    return f"clevrtex_{variant}"


SYNTH_DATASETS: tuple[str, ...] = tuple(name for name, spec in DATASETS.items() if spec.synthesizable)


def dataset_for_file(file_name: str) -> Optional[DatasetSpec]:
    """The known dataset a file name belongs to (None for an unknown name)."""
    for spec in DATASETS.values():
        if file_name in (spec.train_file, spec.test_file):
            return spec
    return None


def known_file_names() -> list[str]:
    """Every .h5 file name a shipped config may refer to."""
    names: list[str] = []
    for spec in DATASETS.values():
        names += [spec.train_file, spec.test_file]
    return names
