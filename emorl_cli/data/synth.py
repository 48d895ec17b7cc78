"""`emorl data synth`: write a synthetic dataset in the Zenodo layout, under the Zenodo file names.

Each split goes to its own file (`tetrominoes.h5` with group `train`, `tetrominoes_test.h5` with group
`test`, …) written atomically, in chunks, deterministically for a seed; the manifest of the folder gets
each file's size and md5 so `emorl data verify` covers synthetic data too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

import numpy as np

from emorl_cli import __version__
from emorl_cli.data import synth_dsprites, synth_tetrominoes
from emorl_cli.data.h5 import atomic_h5
from emorl_cli.data.manifest import Manifest, md5_file
from emorl_cli.data.progress import NullProgress, Progress
from emorl_cli.data.registry import DATASETS, SYNTH_DATASETS
from emorl_cli.data.space import check_disk_space
from emorl_cli.errors import DataError
from emorl_cli.files import remove_stale_temp_files
from emorl_cli.locks import lock_folder

GENERATORS: dict[str, ModuleType] = {"tetrominoes": synth_tetrominoes, "multi_dsprites": synth_dsprites}
_SPLIT_CODE = {"train": 0, "test": 1}


@dataclass(frozen=True)
class SynthFile:
    """One written file."""

    path: Path
    split: str
    num_images: int
    size_bytes: int
    md5: str


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The random stream of one split: train and test differ, both fixed by the seed."""
    return np.random.default_rng([seed, _SPLIT_CODE[split]])


def generate(name: str, n: int, seed: int = 0, split: str = "train") -> dict[str, np.ndarray]:
    """`n` images of a synthetic dataset in memory (imgs, masks, factors), as the files would hold them."""
    gen = generator_module(name)
    rng = split_rng(seed, split)
    parts = [gen.generate(min(gen.CHUNK, n - s), rng) for s in range(0, n, gen.CHUNK)]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("imgs", "masks", "factors")}


def generator_module(name: str) -> ModuleType:
    """The generator module of a synthetic dataset (`layout`, `generate`, `CHUNK`), or a DataError naming the
    choices."""
    if name not in GENERATORS:
        raise DataError(f"no synthetic generator for {name!r}; choose one of: {', '.join(SYNTH_DATASETS)}")
    return GENERATORS[name]


def synthesize(
    name: str,
    out_dir: Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    *,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> list[SynthFile]:
    """Write the train and test files of a synthetic dataset into `out_dir`.

    Args:
        name: 'tetrominoes' or 'multi_dsprites'.
        n_train / n_test: images per split (0 skips that split's file).
        seed: fixes every image.
        force: replace files that already exist (otherwise that is an error).

    Raises:
        DataError: unknown name, negative count, or an existing file without `force`.
    """
    gen = generator_module(name)
    out_dir = Path(out_dir)
    counts = {"train": n_train, "test": n_test}
    if any(n < 0 for n in counts.values()) or sum(counts.values()) == 0:
        raise DataError(f"--train and --test must be ≥ 0 and not both 0, got {n_train} and {n_test}")
    layouts = gen.layout(n_train + n_test).values()
    needed = sum(int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize for shape, dtype in layouts)
    check_disk_space(out_dir, needed, f"{n_train:,} training and {n_test:,} test images", "--train or --test")
    # one synth (or fetch) per folder: the manifest is read, changed and written back
    with lock_folder(out_dir, "emorl data synth", advice="wait for it to finish, or write into another --out"):
        remove_stale_temp_files(out_dir, owned_folder=True)
        return _write_splits(name, out_dir, counts, seed, force, progress or NullProgress())


def _write_splits(
    name: str, out_dir: Path, counts: dict[str, int], seed: int, force: bool, progress: Progress
) -> list[SynthFile]:
    gen = generator_module(name)
    spec = DATASETS[name]
    targets = {split: out_dir / spec.file_for(split) for split, n in counts.items() if n > 0}
    existing = [p for p in targets.values() if p.exists()]
    if existing and not force:
        raise DataError(
            f"{existing[0]} already exists; pass --force to replace it or choose another --out "
            "(a real Zenodo file there would be lost)"
        )
    manifest = Manifest.load(out_dir)
    written: list[SynthFile] = []
    for split, path in targets.items():
        n = counts[split]
        rng = split_rng(seed, split)
        progress.start(f"{path.name} ({split})", n, unit="images")
        try:
            with atomic_h5(path) as handle:
                group = handle.create_group(split)
                datasets = {
                    key: group.create_dataset(key, shape=shape, dtype=dtype)
                    for key, (shape, dtype) in gen.layout(n).items()
                }
                datasets["factors"].attrs["columns"] = ",".join(spec.factor_names)
                handle.attrs["emorl_synthetic"] = name
                handle.attrs["emorl_seed"] = seed
                handle.attrs["emorl_version"] = __version__
                for start in range(0, n, gen.CHUNK):
                    stop = min(start + gen.CHUNK, n)
                    chunk = gen.generate(stop - start, rng)
                    for key, ds in datasets.items():
                        ds[start:stop] = chunk[key]
                    progress.advance(stop - start)
        except OSError as exc:
            raise DataError(f"cannot write {path} ({exc}); check free space and permissions in {out_dir}") from None
        finally:
            progress.finish()
        md5 = md5_file(path)
        size = path.stat().st_size
        manifest.record_file(path.name, size, md5, f"synth:{name} seed={seed} n={n}")
        manifest.save()
        written.append(SynthFile(path, split, n, size, md5))
    return written
