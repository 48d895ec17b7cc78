"""Unpacking downloaded archives (zip, tar, tar.gz) safely into a destination folder.

Archives are untrusted input. Every member name is checked before anything is written: absolute paths,
drive letters, `..`, links and device files are refused, and every target must resolve inside the
destination. Members are then written to `NAME.part`, checked (size as announced, the archive's own
checksums — zip CRC-32 per member, gzip CRC-32 and length over a tar.gz stream — and, by kind, `.h5` must be
HDF5 and `.png` must carry the PNG signature) and only then renamed to their final name, each recorded in
the manifest with its size and md5.

A tar.gz is read twice: once whole to check its names and checksums (nothing is written), then to unpack.
The first pass doubles as the integrity check of an archive whose source publishes no checksum.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional

import h5py

from emorl_cli.data.manifest import HASH_CHUNK, Manifest, safe_relative
from emorl_cli.data.progress import NullProgress, Progress, human_bytes
from emorl_cli.data.registry import MANIFEST_NAME
from emorl_cli.errors import DownloadError
from emorl_cli.files import inner_folder, open_for_writing
from emorl_cli.locks import LOCK_NAME

ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TAR_READ_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error)


class ArchiveDamaged(Exception):
    """The archive cannot be read whole (truncated, a checksum failed, not an archive of its kind)."""


@dataclass(frozen=True)
class ArchiveListing:
    """What the checking pass found: every file member's name (as written in the manifest) and size."""

    members: tuple[tuple[str, int], ...]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.members)


def is_archive(name: str) -> bool:
    """True for the archive kinds `extract_archive` unpacks (by file name)."""
    lower = name.lower()
    return lower.endswith(ZIP_SUFFIXES) or lower.endswith(TAR_SUFFIXES)


def _is_zip(name: str) -> bool:
    return name.lower().endswith(ZIP_SUFFIXES)


# Names emorl keeps for its own bookkeeping in a data folder: no download or archive member may take them.
RESERVED_NAMES = (MANIFEST_NAME, LOCK_NAME)


def _unsafe(archive_name: str, member: str, why: str) -> DownloadError:
    return DownloadError(
        f"archive {archive_name} holds {why} {member!r}; nothing was extracted — the archive is not trustworthy"
    )


def _target(dest: Path, archive_name: str, member: str) -> tuple[Path, str]:
    """(target path, manifest name) of a member, refusing names that are unsafe or land outside `dest`."""
    try:
        rel = safe_relative(member)
    except ValueError:
        raise _unsafe(archive_name, member, "an unsafe path (absolute or with '..')") from None
    if rel.name in RESERVED_NAMES:
        raise _unsafe(archive_name, member, "a member named like a file emorl keeps for its own bookkeeping:")
    target = dest.joinpath(*rel.parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise DownloadError(
            f"archive {archive_name} member {member!r} would land outside {dest}; nothing was extracted"
        )
    return target, rel.as_posix()


def _check_kind(name: str, part: Path, archive_name: str) -> None:
    """Members whose kind emorl reads must be of that kind (an .h5 is HDF5, a .png starts like a PNG)."""
    lower = name.lower()
    if lower.endswith(".h5") and not h5py.is_hdf5(part):
        part.unlink(missing_ok=True)
        raise DownloadError(f"member {name} of {archive_name} is not an HDF5 file; the archive is damaged")
    if lower.endswith(".png"):
        with open(part, "rb") as handle:
            head = handle.read(len(PNG_SIGNATURE))
        if head != PNG_SIGNATURE:
            part.unlink(missing_ok=True)
            raise DownloadError(f"member {name} of {archive_name} is not a PNG image; the archive is damaged")


def write_block(handle: Any, data: bytes, path: Path) -> None:
    """`handle.write(data)`; a full disk or another write failure becomes a `DownloadError` naming `path`."""
    try:
        handle.write(data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DownloadError(
                f"disk full while writing {path}; free space in {path.parent} and run the command again "
                "(the download resumes where it stopped)"
            ) from None
        raise DownloadError(f"cannot write {path} ({exc.strerror or exc}); check the destination folder") from None


def _write_member(src: IO[bytes], target: Path, size: int, name: str, archive_name: str, progress: Progress) -> str:
    """Copy one member to `target.part`, check it, rename it to `target`; returns its md5."""
    folders = Path(name).parts[:-1]
    root = target.parents[len(folders)]  # the destination the member's name is relative to
    inner_folder(root, *folders)
    part = target.with_name(target.name + ".part")
    digest = hashlib.md5()
    written = 0
    try:
        with open_for_writing(part, "wb") as out:
            while block := src.read(HASH_CHUNK):
                write_block(out, block, part)
                digest.update(block)
                written += len(block)
                progress.advance(len(block))
    except (zipfile.BadZipFile, *_TAR_READ_ERRORS) as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"member {name} of {archive_name} is damaged ({exc}); nothing replaced it") from None
    if written != size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"member {name} of {archive_name} gave {written:,} bytes, expected {size:,}")
    _check_kind(name, part, archive_name)
    os.replace(part, target)
    return digest.hexdigest()


def _check_space(dest: Path, needed: int, archive_name: str) -> None:
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise DownloadError(
            f"not enough disk space in {dest} to extract {archive_name}: needs {human_bytes(needed)}, "
            f"{human_bytes(free)} free; free space and run the command again"
        )


# --------------------------------------------------------------------------------------------- zip


def _zip_members(path: Path, archive: zipfile.ZipFile, dest: Path) -> list[tuple[zipfile.ZipInfo, Path, str]]:
    """(member, target path, manifest name) for every file member; refuses unsafe names before any write."""
    out = []
    for info in archive.infolist():
        if info.is_dir():
            continue
        target, name = _target(dest, path.name, info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise _unsafe(path.name, info.filename, "a symbolic link")
        out.append((info, target, name))
    return out


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveDamaged(f"not a readable zip archive: {exc}") from None


def _extract_zip(path: Path, dest: Path, source: str, manifest: Manifest, progress: Progress) -> list[str]:
    try:
        archive = _open_zip(path)
    except ArchiveDamaged as exc:
        raise DownloadError(f"{path} is {exc} although its checksum matched") from None
    with archive:
        members = _zip_members(path, archive, dest)
        _check_space(dest, sum(info.file_size for info, _, _ in members), path.name)
        names = []
        for info, target, name in members:
            progress.start(f"extracting {name}", info.file_size, unit="bytes")
            try:
                with archive.open(info) as src:
                    md5 = _write_member(src, target, info.file_size, name, path.name, progress)
            finally:
                progress.finish()
            manifest.record_file(name, info.file_size, md5, f"{source}/{path.name}")
            names.append(name)
    return names


def _scan_zip(path: Path, progress: Progress) -> ArchiveListing:
    """Read every member (CRC-checked by zipfile) without writing anything."""
    archive = _open_zip(path)
    with archive:
        members = []
        progress.start(f"checking {path.name}", sum(i.file_size for i in archive.infolist()), unit="bytes")
        try:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                with archive.open(info) as src:
                    while block := src.read(HASH_CHUNK):
                        progress.advance(len(block))
                members.append((info.filename, info.file_size))
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise ArchiveDamaged(str(exc)) from None
        finally:
            progress.finish()
    return ArchiveListing(tuple(members))


# --------------------------------------------------------------------------------------------- tar


class _CountingReader:
    """A read-only file wrapper that advances a progress bar by the (compressed) bytes read."""

    def __init__(self, handle: IO[bytes], progress: Progress):
        self.handle = handle
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size)
        self.progress.advance(len(block))
        return block

    def readable(self) -> bool:
        return True


@contextmanager
def _tar_stream(path: Path, progress: Progress) -> Iterator[tuple[tarfile.TarFile, Any]]:
    """A sequential TarFile over `path` (gunzipped when it is gzip) and the decompressed stream under it."""
    with open(path, "rb") as raw:
        counted = _CountingReader(raw, progress)
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream: Any = gzip.GzipFile(fileobj=counted, mode="rb") if gzipped else counted  # type: ignore[arg-type]
        try:
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                yield archive, stream
        finally:
            if gzipped:
                stream.close()


def _drain(stream: Any) -> None:
    """Read a stream to its end: for gzip this is where its CRC-32 and length are checked."""
    while stream.read(HASH_CHUNK):
        pass


def _tar_file_name(path: Path, member: tarfile.TarInfo) -> Optional[str]:
    """The manifest name of a file member (None for a directory); refuses links, special files, unsafe names."""
    if member.issym() or member.islnk():
        raise _unsafe(path.name, member.name, "a link")
    if not (member.isreg() or member.isdir()):
        raise _unsafe(path.name, member.name, "a special file")
    try:
        name = safe_relative(member.name).as_posix()
    except ValueError:
        raise _unsafe(path.name, member.name, "an unsafe path (absolute or with '..')") from None
    return None if member.isdir() else name


def _scan_tar(path: Path, progress: Progress) -> ArchiveListing:
    """Read a tar(.gz) whole without writing: every name and type checked, every checksum verified."""
    members: list[tuple[str, int]] = []
    progress.start(f"checking {path.name}", path.stat().st_size, unit="bytes")
    try:
        with _tar_stream(path, progress) as (archive, stream):
            for member in archive:
                name = _tar_file_name(path, member)
                if name is not None:
                    members.append((name, member.size))
            _drain(stream)
    except _TAR_READ_ERRORS as exc:
        raise ArchiveDamaged(f"{type(exc).__name__}: {exc}") from None
    finally:
        progress.finish()
    return ArchiveListing(tuple(members))


def _extract_tar(
    path: Path,
    dest: Path,
    source: str,
    manifest: Manifest,
    progress: Progress,
    listing: Optional[ArchiveListing],
) -> list[str]:
    if listing is None:
        try:
            listing = _scan_tar(path, progress)
        except ArchiveDamaged as exc:
            raise DownloadError(
                f"{path.name} is damaged ({exc}); delete it and run the command again to download it afresh"
            ) from None
    for name, _ in listing.members:  # every target inside dest before anything is written
        _target(dest, path.name, name)
    _check_space(dest, listing.total_bytes, path.name)
    names: list[str] = []
    quiet = NullProgress()
    progress.start(f"extracting {path.name}", path.stat().st_size, unit="bytes")
    try:
        with _tar_stream(path, progress) as (archive, stream):
            for member in archive:
                name = _tar_file_name(path, member)
                if name is None:
                    continue
                target, name = _target(dest, path.name, name)
                src = archive.extractfile(member)
                if src is None:  # pragma: no cover - a regular file always has data
                    raise DownloadError(f"member {name} of {path.name} has no data; the archive is damaged")
                with src:
                    md5 = _write_member(src, target, member.size, name, path.name, quiet)
                manifest.record_file(name, member.size, md5, f"{source}/{path.name}")
                names.append(name)
            _drain(stream)
    except _TAR_READ_ERRORS as exc:
        raise DownloadError(f"{path.name} could not be read while unpacking ({exc}); run the command again") from None
    finally:
        progress.finish()
    return names


# --------------------------------------------------------------------------------------------- public


def scan_archive(path: Path, name: str, progress: Progress) -> ArchiveListing:
    """Read an archive whole, writing nothing; `ArchiveDamaged` when it is truncated or a checksum fails.

    Args:
        path: the archive on disk (possibly under a `.part` name).
        name: its real name (decides the kind: zip, or tar with or without gzip).
    """
    if _is_zip(name):
        return _scan_zip(path, progress)
    return _scan_tar(path, progress)


def extract_archive(
    path: Path,
    dest: Path,
    source: str,
    manifest: Manifest,
    progress: Progress,
    *,
    listing: Optional[ArchiveListing] = None,
) -> list[str]:
    """Unpack `path` into `dest` (see the module docstring) and record each member; returns their names.

    The manifest is saved once, after the last member. `listing` is what `scan_archive` found for the
    same file; without it a tar(.gz) is first read whole to check names and checksums (nothing written).

    Raises:
        DownloadError: an unsafe or damaged archive, a member of the wrong kind, or not enough disk space.
    """
    if _is_zip(path.name):
        names = _extract_zip(path, dest, source, manifest, progress)
    else:
        names = _extract_tar(path, dest, source, manifest, progress, listing)
    manifest.save()
    return names
