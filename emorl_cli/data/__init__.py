"""Datasets: .h5 reading and validation, ClevrTex's PNG folders, synthetic generators, downloads, manifest,
previews.

Public API (imported lazily, so `emorl data fetch` does not pay for importing torch):

    open_split(data_cfg, split, data_dir=None) -> H5Dataset        (emorl_cli.data.dataset)
                                  (ClevrTexDataset for data.dataset clevrtex: the same items and batches)
    H5Dataset(path, split, ...)  item: imgs [3,H,W] in [-1,1], masks [O,1,H,W] 0/255, factors [O,F], index
    H5Dataset.get_batch(indices) -> dict of stacked tensors
    make_dataloader(dataset, batch_size, ...) -> DataLoader
    measure_loader_throughput(path, split, batch_size, n_batches) -> images per second
    synthesize(name, out_dir, n_train, n_test, seed) / generate(name, n, seed)   (emorl_cli.data.synth)
    fetch_zenodo(dest, FetchOptions(...))                                        (emorl_cli.data.zenodo)
    fetch_clevrtex(dest, ClevrTexFetchOptions(...))                       (emorl_cli.data.clevrtex_fetch)
    ClevrTexDataset(folder, variant, split, ...)                                (emorl_cli.data.clevrtex)
    verify_folder(folder) -> [FileCheck]                                         (emorl_cli.data.manifest)
    describe_file(path) -> FileSummary                                           (emorl_cli.data.h5)
    contact_sheet(path, out_png)                                                 (emorl_cli.data.preview)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "H5Dataset": "dataset",
    "open_split": "dataset",
    "make_dataloader": "dataset",
    "measure_loader_throughput": "dataset",
    "collate_batch": "batches",
    "resolve_split_path": "dataset",
    "synthesize": "synth",
    "generate": "synth",
    "fetch_zenodo": "zenodo",
    "fetch_clevrtex": "clevrtex_fetch",
    "ClevrTexFetchOptions": "clevrtex_fetch",
    "ClevrTexDataset": "clevrtex",
    "FetchOptions": "zenodo",
    "verify_folder": "manifest",
    "Manifest": "manifest",
    "describe_file": "h5",
    "contact_sheet": "preview",
    "DATASETS": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"emorl_cli.data.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'emorl_cli.data' has no attribute {name!r}")
