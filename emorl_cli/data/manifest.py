"""The manifest `emorl-manifest.json` kept next to the data: name, size and md5 of every file emorl wrote.

    {
      "format": "emorl-manifest/1",
      "files":    {"tetrominoes.h5": {"size": 123, "md5": "…", "source": "zenodo:4895643"}},
      "archives": {"datasets.zip":   {"size": 456, "md5": "…", "source": "zenodo:4895643",
                                      "members": ["tetrominoes.h5"], "extracted": true}}
    }

`files` is what `emorl data verify` re-checks. `archives` records the zip files a Zenodo record held, so a
second `data fetch` knows their contents are already in place after the zip itself was removed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from emorl_cli.data.progress import NullProgress, Progress
from emorl_cli.data.registry import MANIFEST_NAME
from emorl_cli.errors import DataError
from emorl_cli.files import atomic_write_json
from emorl_cli.json_input import read_json

FORMAT = "emorl-manifest/1"
HASH_CHUNK = 1 << 20


def md5_file(path: Path, progress: Optional[Progress] = None, chunk: int = HASH_CHUNK) -> str:
    """Hex md5 of a file, advancing `progress` by the bytes read."""
    return hash_file(path, "md5", progress, chunk)


def hash_file(
    path: Path, algorithm: str, progress: Optional[Progress] = None, chunk: int = HASH_CHUNK, prefix: bytes = b""
) -> str:
    """Hex digest (hashlib `algorithm`) of `prefix` + a file's bytes, read in chunks, advancing `progress` by the
    bytes read."""
    progress = progress or NullProgress()
    digest = hashlib.new(algorithm, prefix)
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
            progress.advance(len(block))
    return digest.hexdigest()


def git_blob_id(path: Path, progress: Optional[Progress] = None) -> str:
    """Git's object id of a file's bytes (what `git hash-object FILE` prints): SHA-1 of `blob {size}\\0` + bytes."""
    size = Path(path).stat().st_size
    return hash_file(path, "sha1", progress, prefix=f"blob {size}\0".encode())


def safe_relative(name: str) -> PurePosixPath:
    """A manifest or archive name as a relative path, refusing absolute paths, drive letters and `..`."""
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise ValueError(name)
    clean = [p for p in parts if p not in ("", ".")]
    if not clean:
        raise ValueError(name)
    return PurePosixPath(*clean)


@dataclass
class Manifest:
    """In-memory manifest of one data folder."""

    folder: Path
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    archives: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """The folder's manifest, or an empty one when there is none yet."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not path.exists():
            return cls(folder)
        advice = (
            "delete it and run `emorl data fetch --zenodo` again (verified files are re-checked, not re-downloaded)"
        )
        raw = read_json(path, error=DataError, advice=advice, expect=dict)
        try:
            files = dict(raw.get("files", {}))
            archives = dict(raw.get("archives", {}))
            for entry in files.values():
                int(entry["size"]), str(entry["md5"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DataError(
                f"manifest {path} is damaged ({exc.__class__.__name__}: {exc}); delete it and run "
                "`emorl data fetch --zenodo` again (verified files are re-checked, not re-downloaded)"
            ) from None
        return cls(folder, files, archives)

    def save(self) -> None:
        """Write atomically (temporary file + fsync + rename)."""
        payload = {"format": FORMAT, "files": dict(sorted(self.files.items())), "archives": self.archives}
        atomic_write_json(self.path, payload)

    def record_file(self, name: str, size: int, md5: str, source: str) -> None:
        self.files[name] = {"size": int(size), "md5": md5, "source": source}

    def is_verified(self, name: str, size: Optional[int], md5: Optional[str]) -> bool:
        """True when the manifest vouches for `name` with this size/md5 and the file on disk has that size."""
        entry = self.files.get(name)
        if entry is None:
            return False
        if size is not None and entry["size"] != size:
            return False
        if md5 is not None and entry["md5"] != md5:
            return False
        path = self.folder / name
        return path.is_file() and path.stat().st_size == entry["size"]


@dataclass(frozen=True)
class FileCheck:
    """Outcome of re-checking one manifest entry."""

    name: str
    status: str  # "ok", "missing", "size", "md5", "unsafe name"
    expected_size: int
    actual_size: Optional[int] = None
    expected_md5: str = ""
    actual_md5: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        if self.status == "missing":
            return f"{self.name}: missing"
        if self.status == "size":
            return f"{self.name}: size {self.actual_size:,} bytes, expected {self.expected_size:,}"
        if self.status == "md5":
            return f"{self.name}: md5 {self.actual_md5}, expected {self.expected_md5}"
        if self.status == "unsafe name":
            return f"{self.name}: refers outside the folder"
        return f"{self.name}: ok"


def verify_folder(folder: Path, progress: Optional[Progress] = None) -> list[FileCheck]:
    """Re-check every file the manifest lists (existence, size, md5).

    Raises:
        DataError: the folder or its manifest is missing or damaged.
    """
    folder = Path(folder)
    progress = progress or NullProgress()
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; give the folder `emorl data fetch`/`synth` wrote")
    if not (folder / MANIFEST_NAME).exists():
        raise DataError(
            f"{folder} has no {MANIFEST_NAME}; it is written by `emorl data fetch --zenodo --dest {folder}` "
            f"and `emorl data synth … --out {folder}`"
        )
    manifest = Manifest.load(folder)
    checks: list[FileCheck] = []
    for name, entry in sorted(manifest.files.items()):
        size, md5 = int(entry["size"]), str(entry["md5"])
        try:
            path = folder / safe_relative(name)
        except ValueError:
            checks.append(FileCheck(name, "unsafe name", size, None, md5))
            continue
        if not path.is_file():
            checks.append(FileCheck(name, "missing", size, None, md5))
            continue
        actual_size = path.stat().st_size
        if actual_size != size:
            checks.append(FileCheck(name, "size", size, actual_size, md5))
            continue
        progress.start(f"checking {name}", size, unit="bytes")
        actual_md5 = md5_file(path, progress)
        progress.finish()
        status = "ok" if actual_md5 == md5 else "md5"
        checks.append(FileCheck(name, status, size, actual_size, md5, actual_md5))
    return checks
