"""The two trained models the original EfficientMORL repository publishes: what they are and fetching them.

The original README (pemami4911/EfficientMORL) links a Tetrominoes and a CLEVR6 checkpoint in its
`examples/` folder. They are stored in git itself (the repository has no Git LFS attributes), so a raw-file
URL at a fixed commit serves their bytes, and their git blob ids — SHA-1 of `blob {size}\\0` + the bytes,
fixed by the repository's history — verify them. Downloads reuse the data downloads' machinery
(`emorl_cli.data.download.download_verified`: resume, retries, atomic names, a second try after a mismatch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from emorl_cli.data.download import RemoteFile, download_verified, make_destination
from emorl_cli.data.manifest import Manifest, git_blob_id, md5_file
from emorl_cli.data.progress import NullProgress, Progress
from emorl_cli.data.zenodo import FetchOptions
from emorl_cli.errors import InputError
from emorl_cli.locks import lock_folder

ORIGINAL_REPOSITORY = "pemami4911/EfficientMORL"
# The original's newest commit; both checkpoints are unchanged since they were added.
ORIGINAL_COMMIT = "67939f06d35aa783b52bfe6f36ec9304d0bae1b7"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{ORIGINAL_REPOSITORY}/{ORIGINAL_COMMIT}"
DEFAULT_DEST = Path("models")


@dataclass(frozen=True)
class PublishedModel:
    """One published checkpoint and the figures the original README gives for it.

    Attributes:
        name: what `emorl models fetch NAME` takes.
        path: the file's path inside the original repository (and under `--base-url`).
        git_blob: its git blob id, which the download must match.
        config: the shipped emorl config it was trained with (original `.pth` files need `--config`).
        ari, mse, kl: the original README's ARI (background excluded: emorl's FG-ARI, ×100), MSE and KL.
        trained: how it was trained, as the README says.
    """

    name: str
    path: str
    git_blob: str
    config: str
    ari: float
    mse: float
    kl: float
    trained: str

    @property
    def file_name(self) -> str:
        return Path(self.path).name

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{self.path}"

    def eval_command(self, dest: Path = DEFAULT_DEST, data_dir: Path = Path("data")) -> str:
        """The `emorl eval ari` line whose FG-ARI, MSE and KL compare with the README's figures."""
        return f"emorl eval ari --checkpoint {dest / self.file_name} --config {self.config} --data-dir {data_dir}"


PUBLISHED_MODELS: dict[str, PublishedModel] = {
    "tetrominoes": PublishedModel(
        name="tetrominoes",
        path="examples/emorl-tetrominoes-seed-1200-state-200000.pth",
        git_blob="7a156b042061dfbdf9be6292ef52eb4f1f978749",
        config="tetrominoes",
        ari=99.7,
        mse=2.76e-4,
        kl=70.7,
        trained="seed 1200, 200,000 steps, 5 h 2 min on 2× GeForce RTX 2080 Ti",
    ),
    "clevr6": PublishedModel(
        name="clevr6",
        path="examples/emorl-clevr6-seed-2004-state-300000.pth",
        git_blob="77e554efe795f5aaca437582f48325382cfeb8c3",
        config="clevr6",
        ari=98.05,
        mse=3.64e-4,
        kl=187.1,
        trained="seed 2004, 300,000 steps, about 17 h on 8× GeForce RTX 2080 Ti",
    ),
}


@dataclass(frozen=True)
class FetchedModel:
    """Where a published model now is, and whether this call downloaded it."""

    model: PublishedModel
    path: Path
    downloaded: bool
    refetched: bool = False


def published_model(name: str, models: Mapping[str, PublishedModel] = PUBLISHED_MODELS) -> PublishedModel:
    """The registry entry for `name`; an unknown name lists the known ones."""
    if name not in models:
        raise InputError(f"no published model named {name!r}; choose one of: {', '.join(models)}")
    return models[name]


def is_verified(model: PublishedModel, dest: Path, progress: Optional[Progress] = None) -> bool:
    """True when `dest` holds the model's file with the expected git blob id."""
    path = Path(dest) / model.file_name
    if not path.is_file():
        return False
    progress = progress or NullProgress()
    progress.start(f"checking {model.file_name}", path.stat().st_size, unit="bytes")
    try:
        return git_blob_id(path, progress) == model.git_blob
    finally:
        progress.finish()


def fetch_model(
    name: str,
    dest: Path = DEFAULT_DEST,
    *,
    base_url: str = DEFAULT_BASE_URL,
    opts: Optional[FetchOptions] = None,
    progress: Optional[Progress] = None,
    sleep: Callable[[float], None] = time.sleep,
    models: Mapping[str, PublishedModel] = PUBLISHED_MODELS,
) -> FetchedModel:
    """Download a published checkpoint into `dest` unless a verified copy is there, and record it in the
    folder's manifest. The file gets its final name only when its git blob id matches the registry's.

    Raises:
        InputError: an unknown name.
        DownloadError: network or HTTP failure after the retries, a wrong blob id twice (the bad copy is left
            as `NAME.bad`, never under the final name), a full disk.
        BusyError: another emorl process is fetching into (or otherwise holds) `dest`.
    """
    model = published_model(name, models)
    progress = progress or NullProgress()
    dest = make_destination(dest)
    # one writer per folder: two fetches of one model would append to the same partial download
    with lock_folder(dest, "emorl models fetch", advice="wait for it to finish, or fetch into another --dest"):
        return _fetch_model_locked(model, dest, base_url, opts, progress, sleep)


def _fetch_model_locked(
    model: PublishedModel,
    dest: Path,
    base_url: str,
    opts: Optional[FetchOptions],
    progress: Progress,
    sleep: Callable[[float], None],
) -> FetchedModel:
    manifest = Manifest.load(dest)
    final = dest / model.file_name
    source = f"github:{ORIGINAL_REPOSITORY}/{model.path}"
    if is_verified(model, dest, progress):
        if model.file_name not in manifest.files:
            manifest.record_file(model.file_name, final.stat().st_size, md5_file(final), source)
            manifest.save()
        return FetchedModel(model, final, downloaded=False)
    if final.exists():
        progress.note(f"{final} differs from the published file (git blob id); downloading a verified copy")
    remote = RemoteFile(model.file_name, None, None, model.url(base_url), git_blob=model.git_blob)
    md5, refetched = download_verified(remote, dest, opts or FetchOptions(base_url=base_url), progress, sleep)
    manifest.record_file(model.file_name, final.stat().st_size, md5, source)
    manifest.save()
    return FetchedModel(model, final, downloaded=True, refetched=refetched)
