"""Download a Zenodo record's files: resumable (HTTP Range), verified (size + md5), atomic, standard library only.

For each wanted file of `{base}/api/records/{id}`:

1. skip it when the manifest already vouches for it (same size and md5 as the record);
2. download to `NAME.part`, resuming with `Range: bytes=N-`; network errors, 5xx answers and cut-off
   transfers are retried `retries` times with exponential backoff (a try that made progress resets the count);
3. check size and md5; a mismatch moves the file aside to `NAME.bad` and fetches it once more from scratch —
   a second mismatch is an error;
4. rename `NAME.part` → `NAME` only now, so the final name only ever holds a verified file;
5. a zip is extracted into the destination (absolute paths and `..` are refused before anything is written),
   every member checked (CRC, size) and renamed into place, and the zip removed only after all succeeded;
6. the manifest records name, size and md5 of everything that is now in place.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import h5py

from emorl_cli import __version__
from emorl_cli.data.manifest import HASH_CHUNK, Manifest, git_blob_id, md5_file, safe_relative
from emorl_cli.data.progress import NullProgress, Progress, human_bytes
from emorl_cli.data.registry import ZENODO_BASE_URL, ZENODO_RECORD_ID
from emorl_cli.errors import DownloadError

USER_AGENT = f"emorl/{__version__} (+https://doi.org/10.5281/zenodo.4895643)"
# HTTP answers worth another try; any other error status is final.
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class RemoteFile:
    """One file to download: a Zenodo record's, or any file whose checksum is known (`git_blob`: its git
    object id, checked after the download)."""

    key: str
    size: Optional[int]
    md5: Optional[str]
    url: str
    git_blob: Optional[str] = None

    @property
    def is_zip(self) -> bool:
        return self.key.lower().endswith(".zip")


@dataclass
class FetchOptions:
    """Knobs of `fetch_zenodo` (tests shrink retries, backoff and timeout)."""

    record: str = ZENODO_RECORD_ID
    base_url: str = ZENODO_BASE_URL
    only: Sequence[str] = ()
    retries: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    chunk_bytes: int = HASH_CHUNK
    recheck: bool = False  # hash files the manifest vouches for instead of trusting it


@dataclass
class FetchResult:
    """What a fetch did."""

    dest: Path
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    refetched: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    h5_folders: list[Path] = field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return Manifest(self.dest).path


class _Transient(Exception):
    """A failure worth retrying (network trouble, 5xx, cut-off transfer)."""

    def __init__(self, message: str, progressed: bool = False, status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.progressed = progressed
        self.status = status


# --------------------------------------------------------------------------------------------- HTTP


def _host_of(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    return parsed.netloc or url


def _describe_network_error(url: str, exc: BaseException) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    host = _host_of(url)
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve host {host} (no network or DNS failure: {reason})"
    if isinstance(reason, ConnectionRefusedError):
        return f"cannot connect to {host} (connection refused)"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer from {host} (timed out)"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error talking to {host} ({reason})"
    if isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"cannot reach {host} (network unreachable)"
    return f"network error talking to {host} ({reason})"


def _open(url: str, timeout: float, headers: Optional[dict[str, str]] = None) -> http.client.HTTPResponse:
    """GET `url`; transient failures raise `_Transient`, final HTTP errors `DownloadError`."""
    request = urllib.request.Request(
        url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})}
    )
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https only, see _check_url)
    except urllib.error.HTTPError as exc:
        exc.close()
        text = f"HTTP {exc.code} {exc.reason} for {url}"
        if exc.code in RETRY_STATUS or exc.code == 416:
            raise _Transient(text, status=exc.code) from None
        if exc.code == 404:
            raise DownloadError(
                f"{text}; nothing exists at that address — check --base-url (and --record for Zenodo)"
            ) from None
        raise DownloadError(f"{text}; check --record and --base-url, or try again later") from None
    except urllib.error.URLError as exc:
        raise _Transient(_describe_network_error(url, exc)) from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise _Transient(_describe_network_error(url, exc)) from None
    except OSError as exc:
        raise _Transient(_describe_network_error(url, exc)) from None


def _check_url(url: str) -> str:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"refusing to download {url!r}: only http and https URLs are used")
    return url


def _with_retries(what: str, opts: FetchOptions, sleep: Callable[[float], None], action: Callable[[], Any]) -> Any:
    """Run `action`, retrying `_Transient` failures with exponential backoff."""
    failures = 0
    while True:
        try:
            return action()
        except _Transient as exc:
            failures = 1 if exc.progressed else failures + 1
            if failures > opts.retries:
                tries = failures
                raise DownloadError(
                    f"{exc.message} while {what}; gave up after {tries} {'try' if tries == 1 else 'tries'} — "
                    "check the network (or --base-url) and run the command again (downloads resume)"
                ) from None
            sleep(min(opts.backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S))


# --------------------------------------------------------------------------------------------- record


def _file_url(entry: dict[str, Any], key: str, opts: FetchOptions, record_url: str) -> str:
    links = entry.get("links") or {}
    for name in ("content", "download"):
        if isinstance(links.get(name), str):
            return urllib.parse.urljoin(record_url, links[name])
    self_link = links.get("self")
    quoted = urllib.parse.quote(key, safe="")
    constructed = f"{opts.base_url.rstrip('/')}/api/records/{opts.record}/files/{quoted}/content"
    if isinstance(self_link, str):
        path = urllib.parse.urlsplit(self_link).path
        # New-style Zenodo 'self' links that name a file id (not its key) do not download anything.
        match = re.search(r"/api/records/[^/]+/files/([^/]+)$", path)
        if match and urllib.parse.unquote(match.group(1)) != key:
            return constructed
        if match:
            return urllib.parse.urljoin(record_url, self_link.rstrip("/") + "/content")
        return urllib.parse.urljoin(record_url, self_link)
    return constructed


def _parse_files(payload: Any, opts: FetchOptions, record_url: str) -> list[RemoteFile]:
    files = payload.get("files") if isinstance(payload, dict) else None
    if isinstance(files, dict):
        files = files.get("entries", [])
    if isinstance(files, dict):
        files = list(files.values())
    if not isinstance(files, list):
        return []
    out: list[RemoteFile] = []
    for entry in files:
        if not isinstance(entry, dict):
            continue
        key = entry.get("key") or entry.get("filename")
        if not isinstance(key, str) or not key:
            continue
        size = entry.get("size", entry.get("filesize"))
        checksum = entry.get("checksum")
        md5 = None
        if isinstance(checksum, str) and checksum:
            algo, _, value = checksum.partition(":")
            md5 = value.lower() if value and algo.lower() == "md5" else (None if value else checksum.lower())
        out.append(
            RemoteFile(key, int(size) if size is not None else None, md5, _file_url(entry, key, opts, record_url))
        )
    return out


def _get_json(url: str, opts: FetchOptions, sleep: Callable[[float], None]) -> Any:
    def action() -> Any:
        with _open(url, opts.timeout_s, {"Accept": "application/json"}) as response:
            try:
                body = response.read()
            except (http.client.HTTPException, OSError) as exc:
                raise _Transient(_describe_network_error(url, exc)) from None
        try:
            return json.loads(body)
        except ValueError:
            raise DownloadError(
                f"{url} did not answer with JSON (got {body[:60]!r}…); check --base-url points at a Zenodo server"
            ) from None

    return _with_retries(f"reading {url}", opts, sleep, action)


def list_record_files(opts: FetchOptions, sleep: Callable[[float], None] = time.sleep) -> list[RemoteFile]:
    """The files of Zenodo record `opts.record` (key, size, md5, download URL)."""
    base = _check_url(opts.base_url.rstrip("/"))
    record_url = f"{base}/api/records/{opts.record}"
    files = _parse_files(_get_json(record_url, opts, sleep), opts, record_url)
    if not files:  # InvenioRDM also lists them under /files
        files = _parse_files(_get_json(record_url + "/files", opts, sleep) or {}, opts, record_url)
        if not files:
            raise DownloadError(f"Zenodo record {opts.record} at {record_url} lists no files; check --record")
    for rf in files:
        _check_url(rf.url)
    return files


# --------------------------------------------------------------------------------------------- download


def _write(handle: Any, data: bytes, path: Path) -> None:
    try:
        handle.write(data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DownloadError(
                f"disk full while writing {path}; free space in {path.parent} and run the command again "
                "(the download resumes where it stopped)"
            ) from None
        raise DownloadError(f"cannot write {path} ({exc.strerror or exc}); check the destination folder") from None


class _PartFile:
    """`NAME.part` plus the running md5 of its bytes."""

    def __init__(self, path: Path, progress: Progress):
        self.path = path
        self.digest = hashlib.md5()
        self.size = 0
        if path.exists():
            progress.note(f"resuming {path.name[: -len('.part')]} from {human_bytes(path.stat().st_size)}")
            with open(path, "rb") as handle:
                while block := handle.read(HASH_CHUNK):
                    self.digest.update(block)
                    self.size += len(block)

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        self.digest = hashlib.md5()
        self.size = 0


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _attempt(rf: RemoteFile, part: _PartFile, opts: FetchOptions, progress: Progress) -> None:
    """One GET of `rf` appended to `part` (from where it stands); returns when the file is whole."""
    if rf.size is not None and part.size > rf.size:
        part.reset()
    if rf.size is not None and part.size == rf.size:
        return
    headers = {"Range": f"bytes={part.size}-"} if part.size else {}
    try:
        response = _open(rf.url, opts.timeout_s, headers)
    except _Transient as exc:
        if exc.status == 416:
            part.reset()  # the server will not resume this: start over on the next try
        raise
    with response:
        status = response.status
        if part.size and status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != part.size:
                part.reset()
                raise _Transient(f"the server answered a resume request with range {match and match.group(0)}")
        elif part.size and status == 200:
            part.reset()  # no Range support: the whole file comes again
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        with open(part.path, "ab") as handle:
            while True:
                try:
                    block = response.read(opts.chunk_bytes)
                except (http.client.HTTPException, OSError) as exc:
                    handle.flush()
                    raise _Transient(_describe_network_error(rf.url, exc), progressed=received > 0) from None
                if not block:
                    break
                _write(handle, block, part.path)
                part.digest.update(block)
                part.size += len(block)
                received += len(block)
                progress.advance(len(block))
    short_of_header = expected is not None and received < expected
    short_of_record = rf.size is not None and part.size < rf.size
    if short_of_header or short_of_record:
        want = rf.size if rf.size is not None else part.size + (expected or 0) - received
        raise _Transient(
            f"the connection closed after {human_bytes(part.size)} of {human_bytes(want)} of {rf.key}",
            progressed=received > 0,
        )


def _download_verified(
    rf: RemoteFile, dest: Path, opts: FetchOptions, progress: Progress, sleep: Callable[[float], None]
) -> tuple[str, bool]:
    """Download `rf` to `dest/NAME` via `NAME.part`; returns (md5, refetched). Final name only when verified."""
    final = dest / rf.key
    part_path = final.with_name(final.name + ".part")
    final.parent.mkdir(parents=True, exist_ok=True)
    refetched = False
    for round_ in (1, 2):
        part = _PartFile(part_path, progress)
        progress.start(f"{rf.key}", rf.size, unit="bytes", completed=part.size)
        try:
            _with_retries(f"downloading {rf.key}", opts, sleep, lambda part=part: _attempt(rf, part, opts, progress))
        finally:
            progress.finish()
        got = part.digest.hexdigest()
        size_ok = rf.size is None or part.size == rf.size
        md5_ok = rf.md5 is None or got == rf.md5
        blob = git_blob_id(part_path) if rf.git_blob is not None and size_ok and md5_ok else None
        bad = final.with_name(final.name + ".bad")
        if size_ok and md5_ok and blob == rf.git_blob:
            os.replace(part_path, final)
            bad.unlink(missing_ok=True)  # a copy set aside by the first round is no longer needed
            return got, refetched
        os.replace(part_path, bad)
        if not size_ok:
            problem = f"size {part.size:,} bytes, expected {rf.size:,}"
        elif not md5_ok:
            problem = f"md5 {got}, expected {rf.md5}"
        else:
            problem = f"git blob id {blob}, expected {rf.git_blob}"
        if round_ == 1:
            progress.note(f"{rf.key}: checksum mismatch ({problem}); moved aside to {bad.name}, fetching it again")
            refetched = True
            continue
        raise DownloadError(
            f"checksum mismatch for {rf.key} again after a fresh download ({problem}); the bad copy is at {bad} — "
            "the server or a proxy serves a damaged file, try again later"
        )
    raise AssertionError("unreachable")


def make_destination(dest: Path) -> Path:
    """Create the download folder `dest` (and its parents); a failure is a `DownloadError` naming it."""
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the destination folder {dest} ({exc.strerror or exc})") from None
    return dest


def download_verified(
    rf: RemoteFile,
    dest: Path,
    opts: Optional[FetchOptions] = None,
    progress: Optional[Progress] = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str, bool]:
    """Download one file to `dest/rf.key` with the guarantees of `fetch_zenodo`: resumed from `NAME.part`,
    retried with backoff, checked (size, md5, git blob id — whichever `rf` knows), renamed into place only when
    it matches, else moved aside to `NAME.bad` and fetched once more. Returns (md5 of the file, refetched).

    Raises:
        DownloadError: network/HTTP failure after the retries, a checksum mismatch twice, a full disk.
    """
    _check_url(rf.url)
    return _download_verified(rf, Path(dest), opts or FetchOptions(), progress or NullProgress(), sleep)


# --------------------------------------------------------------------------------------------- zip


def _member_targets(zip_path: Path, archive: zipfile.ZipFile, dest: Path) -> list[tuple[zipfile.ZipInfo, Path, str]]:
    """(member, target path, manifest name) for every file member; refuses unsafe names before any write."""
    root = dest.resolve()
    out = []
    for info in archive.infolist():
        if info.is_dir():
            continue
        try:
            rel = safe_relative(info.filename)
        except ValueError:
            raise DownloadError(
                f"archive {zip_path.name} holds an unsafe path {info.filename!r} (absolute or with '..'); "
                "nothing was extracted — the archive is not trustworthy"
            ) from None
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DownloadError(
                f"archive {zip_path.name} holds a symbolic link {info.filename!r}; nothing was extracted — "
                "the archive is not trustworthy"
            )
        target = dest.joinpath(*rel.parts)
        if not target.resolve().is_relative_to(root):
            raise DownloadError(
                f"archive {zip_path.name} member {info.filename!r} would land outside {dest}; nothing was extracted"
            )
        out.append((info, target, rel.as_posix()))
    return out


def _extract_zip(zip_path: Path, dest: Path, source: str, manifest: Manifest, progress: Progress) -> list[str]:
    """Extract every member (checked: CRC, size; .h5 members must be HDF5) and record it in the manifest."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{zip_path} is not a readable zip archive ({exc}) although its md5 matched") from None
    with archive:
        members = _member_targets(zip_path, archive, dest)
        needed = sum(info.file_size for info, _, _ in members)
        free = shutil.disk_usage(dest).free
        if needed > free:
            raise DownloadError(
                f"not enough disk space in {dest} to extract {zip_path.name}: needs {human_bytes(needed)}, "
                f"{human_bytes(free)} free; free space and run the command again"
            )
        names = []
        for info, target, name in members:
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            digest = hashlib.md5()
            written = 0
            progress.start(f"extracting {name}", info.file_size, unit="bytes")
            try:
                with archive.open(info) as src, open(part, "wb") as out:
                    while block := src.read(HASH_CHUNK):
                        _write(out, block, part)
                        digest.update(block)
                        written += len(block)
                        progress.advance(len(block))
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                part.unlink(missing_ok=True)
                raise DownloadError(
                    f"member {name} of {zip_path.name} is damaged ({exc}); nothing replaced it"
                ) from None
            finally:
                progress.finish()
            if written != info.file_size:
                part.unlink(missing_ok=True)
                raise DownloadError(
                    f"member {name} of {zip_path.name} gave {written:,} bytes, expected {info.file_size:,}"
                )
            if name.endswith(".h5") and not h5py.is_hdf5(part):
                part.unlink(missing_ok=True)
                raise DownloadError(f"member {name} of {zip_path.name} is not an HDF5 file; the archive is damaged")
            os.replace(part, target)
            manifest.record_file(name, written, digest.hexdigest(), f"{source}/{zip_path.name}")
            manifest.save()
            names.append(name)
    return names


# --------------------------------------------------------------------------------------------- main


def _select(files: list[RemoteFile], only: Sequence[str], record: str) -> list[RemoteFile]:
    if not only:
        return files
    by_key = {rf.key: rf for rf in files}
    missing = [name for name in only if name not in by_key]
    if missing:
        names = ", ".join(sorted(by_key))
        zips = [rf.key for rf in files if rf.is_zip]
        tip = f"; the .h5 files come inside {', '.join(zips)} (fetch without --only)" if zips else ""
        raise DownloadError(
            f"record {record} has no file named {', '.join(repr(m) for m in missing)}; it holds: {names}{tip}"
        )
    return [by_key[name] for name in dict.fromkeys(only)]


def _archive_done(manifest: Manifest, rf: RemoteFile, recheck: bool, progress: Progress) -> bool:
    """True when a zip of the record was extracted before and all its members are still in place."""
    entry = manifest.archives.get(rf.key)
    if not entry or not entry.get("extracted"):
        return False
    if (rf.md5 and entry.get("md5") != rf.md5) or (rf.size is not None and entry.get("size") != rf.size):
        return False
    for name in entry.get("members", []):
        if name not in manifest.files or not manifest.is_verified(name, None, manifest.files[name]["md5"]):
            return False
        if recheck and not _hash_matches(manifest.folder / name, manifest.files[name]["md5"], progress):
            progress.note(f"{name} no longer matches its md5; fetching {rf.key} again")
            return False
    return True


def _hash_matches(path: Path, md5: str, progress: Progress) -> bool:
    progress.start(f"checking {path.name}", path.stat().st_size, unit="bytes")
    try:
        return md5_file(path, progress) == md5
    finally:
        progress.finish()


def _adopt_existing(rf: RemoteFile, dest: Path, manifest: Manifest, progress: Progress, source: str) -> bool:
    """A file already under its final name but not in the manifest: hash it; True when it is the record's."""
    final = dest / rf.key
    if not final.is_file() or rf.md5 is None or (rf.size is not None and final.stat().st_size != rf.size):
        return False
    if not _hash_matches(final, rf.md5, progress):
        progress.note(f"{rf.key} exists but its md5 differs from the record's; downloading a verified copy")
        return False
    manifest.record_file(rf.key, final.stat().st_size, rf.md5, source)
    manifest.save()
    return True


def fetch_zenodo(
    dest: Path,
    opts: Optional[FetchOptions] = None,
    progress: Optional[Progress] = None,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchResult:
    """Download (and verify, extract, record) the files of a Zenodo record into `dest`.

    Raises:
        DownloadError: network/DNS failure, HTTP error, checksum mismatch twice, disk full, unsafe archive,
            or `opts.only` naming a file the record lacks (the message lists the record's names).
    """
    opts = opts or FetchOptions()
    progress = progress or NullProgress()
    dest = make_destination(dest)
    source = f"zenodo:{opts.record}"
    files = _select(list_record_files(opts, sleep), opts.only, opts.record)
    for rf in files:
        try:
            safe_relative(rf.key)
        except ValueError:
            raise DownloadError(f"record file name {rf.key!r} is unsafe (absolute or with '..'); refusing it") from None
    manifest = Manifest.load(dest)
    result = FetchResult(dest)

    if opts.recheck:  # forget what the manifest vouches for; files that still match are adopted again below
        for rf in files:
            manifest.files.pop(rf.key, None)
    todo: list[RemoteFile] = []
    for rf in files:
        if rf.is_zip and _archive_done(manifest, rf, opts.recheck, progress):
            result.skipped.append(rf.key)
        elif manifest.is_verified(rf.key, rf.size, rf.md5) or _adopt_existing(rf, dest, manifest, progress, source):
            if rf.is_zip:
                todo.append(rf)  # verified zip still on disk: extract it (no download)
            else:
                result.skipped.append(rf.key)
        else:
            todo.append(rf)

    needed = 0
    for rf in todo:
        if rf.size is not None and not manifest.is_verified(rf.key, rf.size, rf.md5):
            part = dest / (rf.key + ".part")
            needed += rf.size - (part.stat().st_size if part.exists() else 0)
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise DownloadError(
            f"not enough disk space in {dest}: the download needs {human_bytes(needed)} more, {human_bytes(free)} "
            "free; free some space or choose another --dest"
        )

    for rf in todo:
        if not manifest.is_verified(rf.key, rf.size, rf.md5):
            md5, refetched = _download_verified(rf, dest, opts, progress, sleep)
            manifest.record_file(rf.key, (dest / rf.key).stat().st_size, md5, source)
            manifest.save()
            result.downloaded.append(rf.key)
            if refetched:
                result.refetched.append(rf.key)
        if rf.is_zip:
            zip_path = dest / rf.key
            members = _extract_zip(zip_path, dest, source, manifest, progress)
            entry = manifest.files.pop(rf.key)
            manifest.archives[rf.key] = {**entry, "members": members, "extracted": True}
            manifest.save()
            zip_path.unlink()
            result.extracted += members
    result.h5_folders = sorted({(dest / name).parent for name in manifest.files if name.endswith(".h5")})
    return result
