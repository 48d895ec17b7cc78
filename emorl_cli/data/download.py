"""Verified, resumable downloads into a data folder: the machinery every `emorl data fetch` source shares.

Standard library only. For each wanted file (`RemoteFile`: name, size and md5 where the source publishes
them, URL):

1. skip it when the manifest already vouches for it (same size and md5 as published);
2. download to `NAME.part`, resuming with `Range: bytes=N-`; network errors, 5xx answers, cut-off and stalled
   transfers (less than `STALL_BYTES` in `timeout` seconds) are retried `retries` times with exponential
   backoff. A try resets the count only when it took the file at least `PROGRESS_BYTES` further than any try
   before it, so no answer of a server — a body that ignores `Range`, a wrong `Content-Range`, a gzip-encoded
   body, a trickle — can keep a fetch going for ever. A resume the server refuses restarts the file from zero,
   once: later tries of that file ask for the whole file;
3. check size and md5 or sha256 — whichever is published; an archive whose source publishes no checksum is
   checked instead by reading it whole (gzip CRC-32 and length, tar header checksums, zip CRCs), and any other
   file only by its size, which the result says (`FetchResult.checks`). A mismatch moves the file aside to
   `NAME.bad` and fetches it once more from scratch — a second mismatch is an error;
4. rename `NAME.part` → `NAME` only now, so the final name only ever holds a verified file;
5. an archive is unpacked into the destination (see `emorl_cli.data.archives`: unsafe names refused before
   anything is written, every member checked and renamed into place) and removed only after all succeeded;
6. the manifest records name, size and md5 of everything that is now in place.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from emorl_cli import __version__
from emorl_cli.data.archives import (
    RESERVED_NAMES,
    ArchiveDamaged,
    ArchiveListing,
    extract_archive,
    is_archive,
    scan_archive,
    write_block,
)
from emorl_cli.data.manifest import HASH_CHUNK, Manifest, git_blob_id, hash_file, md5_file, safe_relative
from emorl_cli.data.progress import NullProgress, Progress, human_bytes
from emorl_cli.errors import DownloadError
from emorl_cli.files import inner_folder, open_for_writing, remove_stale_temp_files
from emorl_cli.locks import lock_folder

USER_AGENT = f"emorl/{__version__} (+https://doi.org/10.5281/zenodo.4895643)"
# HTTP answers worth another try; any other error status is final.
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 60.0
# A try that takes a file this much further than any try before it resets the count of failed tries.
PROGRESS_BYTES = 1 << 20
# A transfer that delivers less than this in `timeout` seconds has stalled (a trickle is no transfer).
STALL_BYTES = 1024


@dataclass(frozen=True)
class RemoteFile:
    """One file a source offers: its name in the destination, size and md5 where published, its URL, and
    `sha256` or `git_blob` (its git object id), checked after the download, where that is what is known."""

    key: str
    size: Optional[int]
    md5: Optional[str]
    url: str
    git_blob: Optional[str] = None
    sha256: Optional[str] = None

    @property
    def check(self) -> str:
        """How a download of this file is checked: 'md5', 'sha256', 'git blob id', 'archive' (read whole, its
        own checksums), 'size' (nothing else is known) or 'nothing'."""
        if self.md5 is not None:
            return "md5"
        if self.sha256 is not None:
            return "sha256"
        if self.git_blob is not None:
            return "git blob id"
        if self.is_archive:
            return "archive"
        return "size" if self.size is not None else "nothing"

    @property
    def is_archive(self) -> bool:
        """A zip or (gzipped) tar archive, unpacked after the download."""
        return is_archive(self.key)


@dataclass
class TransferOptions:
    """How hard to try (tests shrink retries, backoff and timeout)."""

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
    unpacked: dict[str, int] = field(default_factory=dict)  # archive → how many files it unpacked
    checks: dict[str, str] = field(default_factory=dict)  # downloaded file → how it was checked (RemoteFile.check)
    h5_folders: list[Path] = field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return Manifest(self.dest).path


class TransientError(Exception):
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


def describe_network_error(url: str, exc: BaseException) -> str:
    """One phrase naming the host and what went wrong (DNS, refused, timeout, TLS, unreachable)."""
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


def open_url(url: str, timeout: float, headers: Optional[dict[str, str]] = None) -> http.client.HTTPResponse:
    """GET `url`; transient failures raise `TransientError`, final HTTP errors `DownloadError`."""
    request = urllib.request.Request(
        url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})}
    )
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https only, see check_url)
    except urllib.error.HTTPError as exc:
        exc.close()
        if 300 <= exc.code < 400:  # urllib gives up on a redirect loop, a chain of more than 10, or no Location
            raise DownloadError(
                f"{url} redirects in a loop or nowhere (HTTP {exc.code}: a loop, more than 10 hops, or no "
                "destination); check --base-url, or try again later"
            ) from None
        reason = " ".join(str(exc.reason).split())  # one line, whatever the server wrote
        text = f"HTTP {exc.code} {reason} for {url}"
        if exc.code in RETRY_STATUS or exc.code == 416:
            raise TransientError(text, status=exc.code) from None
        if exc.code == 404:
            raise DownloadError(f"{text}; the file does not exist there — check --base-url (and --record)") from None
        raise DownloadError(f"{text}; check --base-url (and --record), or try again later") from None
    except urllib.error.URLError as exc:
        raise TransientError(describe_network_error(url, exc)) from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise TransientError(describe_network_error(url, exc)) from None
    except OSError as exc:
        raise TransientError(describe_network_error(url, exc)) from None


def check_url(url: str) -> str:
    """`url` itself when it is http or https; anything else (or a malformed URL) is refused."""
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 (parses the port, raising ValueError for a bad one)
    except ValueError as exc:
        raise DownloadError(f"{url!r} is not a valid URL ({exc}); give one such as https://zenodo.org") from None
    scheme = parsed.scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"refusing to download {url!r}: only http and https URLs are used")
    return url


def with_retries(what: str, opts: TransferOptions, sleep: Callable[[float], None], action: Callable[[], Any]) -> Any:
    """Run `action`, retrying `TransientError` failures with exponential backoff."""
    failures = 0
    while True:
        try:
            return action()
        except TransientError as exc:
            failures = 1 if exc.progressed else failures + 1
            if failures > opts.retries:
                tries = failures
                raise DownloadError(
                    f"{exc.message} while {what}; gave up after {tries} {'try' if tries == 1 else 'tries'} — "
                    "check the network (or --base-url) and run the command again (downloads resume)"
                ) from None
            sleep(min(opts.backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S))


# --------------------------------------------------------------------------------------------- download


class _PartFile:
    """`NAME.part` plus the running md5 of its bytes."""

    def __init__(self, path: Path, progress: Progress):
        self.path = path
        self.digest = hashlib.md5()
        self.size = 0
        self.resume = True  # False once the server refused a resume: later tries ask for the whole file
        if path.exists() or path.is_symlink():
            with open_for_writing(path, "r+b") as handle:  # never read or resume through a planted link
                progress.note(
                    f"resuming {path.name[: -len('.part')]} from {human_bytes(os.fstat(handle.fileno()).st_size)}"
                )
                while block := handle.read(HASH_CHUNK):
                    self.digest.update(block)
                    self.size += len(block)
        self.furthest = self.size

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        self.digest = hashlib.md5()
        self.size = 0

    def refuse_resume(self) -> None:
        """The server will not resume this file: start it over from zero, and never ask for a range again."""
        self.reset()
        self.resume = False

    def advanced(self) -> bool:
        """Whether the file now reaches at least `PROGRESS_BYTES` past the furthest point of every earlier try;
        records the new furthest point."""
        gained = self.size - self.furthest
        self.furthest = max(self.furthest, self.size)
        return gained >= PROGRESS_BYTES


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def read_blocks(response: http.client.HTTPResponse, url: str, opts: TransferOptions) -> Iterator[bytes]:
    """The body of `response` block by block as it arrives. A transfer that delivers less than `STALL_BYTES`
    in `opts.timeout_s` seconds (nothing at all, or a trickle) raises `TransientError`, as does a cut-off
    connection; the caller sees each block before the error."""
    window_start, window_bytes = time.monotonic(), 0
    while True:
        try:
            block = response.read1(opts.chunk_bytes)
        except (http.client.HTTPException, OSError) as exc:
            raise TransientError(describe_network_error(url, exc)) from None
        if not block:
            return
        yield block
        window_bytes += len(block)
        elapsed = time.monotonic() - window_start
        if elapsed >= opts.timeout_s:
            if window_bytes < STALL_BYTES:
                raise TransientError(
                    f"the transfer from {_host_of(url)} stalled ({window_bytes:,} bytes in {elapsed:.0f} s, "
                    f"--timeout {opts.timeout_s:g})"
                )
            window_start, window_bytes = time.monotonic(), 0


def _attempt(rf: RemoteFile, part: _PartFile, opts: TransferOptions, progress: Progress) -> None:
    """One GET of `rf` appended to `part` (from where it stands); returns when the file is whole."""
    if (rf.size is not None and part.size > rf.size) or (part.size and not part.resume):
        part.reset()
    if rf.size is not None and part.size == rf.size:
        return
    headers = {"Range": f"bytes={part.size}-"} if part.size else {}
    try:
        response = open_url(rf.url, opts.timeout_s, headers)
    except TransientError as exc:
        if exc.status == 416:
            part.refuse_resume()  # the server will not resume this: start over on the next try
        raise
    with response:
        status = response.status
        if part.size and status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != part.size:
                part.refuse_resume()
                raise TransientError(
                    f"the server answered a resume request with range {match and match.group(0)}; starting "
                    f"{rf.key} over from zero"
                )
        elif part.size and status == 200:
            part.refuse_resume()  # no Range support: the whole file comes again, and is asked for from now on
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise TransientError(
                f"the server sent {rf.key} {encoding}-encoded although emorl asked for its bytes as they are"
            )
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        with open_for_writing(part.path, "ab") as handle:
            try:
                for block in read_blocks(response, rf.url, opts):
                    write_block(handle, block, part.path)
                    part.digest.update(block)
                    part.size += len(block)
                    received += len(block)
                    progress.advance(len(block))
            except TransientError as exc:
                handle.flush()
                exc.progressed = part.advanced()
                raise
    short_of_header = expected is not None and received < expected
    short_of_record = rf.size is not None and part.size < rf.size
    if short_of_header or short_of_record:
        want = rf.size if rf.size is not None else part.size + (expected or 0) - received
        raise TransientError(
            f"the connection closed after {part.size:,} of {want:,} bytes ({human_bytes(want)}) of {rf.key}",
            progressed=part.advanced(),
        )


def _check_download(rf: RemoteFile, part: _PartFile, progress: Progress) -> tuple[Optional[str], Any]:
    """(problem or None, archive listing) of a finished `NAME.part`: size, md5, sha256 and git blob id where
    known; an archive with no checksum is read whole instead (its own checksums stand in for the missing one)."""
    got = part.digest.hexdigest()
    if rf.size is not None and part.size != rf.size:
        return f"size {part.size:,} bytes, expected {rf.size:,}", None
    if rf.md5 is not None and got != rf.md5:
        return f"md5 {got}, expected {rf.md5}", None
    if rf.md5 is None and rf.sha256 is not None:
        sha256 = hash_file(part.path, "sha256")
        return (None if sha256 == rf.sha256 else f"sha256 {sha256}, expected {rf.sha256}"), None
    if rf.git_blob is not None:
        blob = git_blob_id(part.path)
        return (None if blob == rf.git_blob else f"git blob id {blob}, expected {rf.git_blob}"), None
    if rf.md5 is None and rf.is_archive:
        try:
            return None, scan_archive(part.path, rf.key, progress)
        except ArchiveDamaged as exc:
            return f"the archive is damaged ({exc})", None
    return None, None


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
    opts: Optional[TransferOptions] = None,
    progress: Optional[Progress] = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str, bool]:
    """Download one file to `dest/rf.key`: resumed from `NAME.part`, retried with backoff, checked (size, md5,
    git blob id — whichever `rf` knows; an archive with none is read whole), renamed into place only when it
    matches, else moved aside to `NAME.bad` and fetched once more. Returns (md5 of the file, refetched).

    Raises:
        DownloadError: network/HTTP failure after the retries, a checksum mismatch twice, a full disk.
    """
    check_url(rf.url)
    md5, refetched, _ = _download_checked(rf, Path(dest), opts or TransferOptions(), progress or NullProgress(), sleep)
    return md5, refetched


def _download_checked(
    rf: RemoteFile, dest: Path, opts: TransferOptions, progress: Progress, sleep: Callable[[float], None]
) -> tuple[str, bool, Optional[ArchiveListing]]:
    """`download_verified`, also returning the archive listing when the check read the archive."""
    final = dest / rf.key
    part_path = final.with_name(final.name + ".part")
    inner_folder(dest, *Path(rf.key).parts[:-1])
    refetched = False
    for round_ in (1, 2):
        part = _PartFile(part_path, progress)
        progress.start(f"{rf.key}", rf.size, unit="bytes", completed=part.size)
        try:
            with_retries(f"downloading {rf.key}", opts, sleep, lambda part=part: _attempt(rf, part, opts, progress))
        finally:
            progress.finish()
        problem, listing = _check_download(rf, part, progress)
        bad = final.with_name(final.name + ".bad")
        if problem is None:
            os.replace(part_path, final)
            bad.unlink(missing_ok=True)  # a copy set aside by the first round is no longer needed
            return part.digest.hexdigest(), refetched, listing
        os.replace(part_path, bad)
        if round_ == 1:
            progress.note(f"{rf.key}: checksum mismatch ({problem}); moved aside to {bad.name}, fetching it again")
            refetched = True
            continue
        raise DownloadError(
            f"checksum mismatch for {rf.key} again after a fresh download ({problem}); the bad copy is at {bad} — "
            "the server or a proxy serves a damaged file, try again later"
        )
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------- main loop


def _archive_done(manifest: Manifest, rf: RemoteFile, recheck: bool, progress: Progress) -> bool:
    """True when an archive was unpacked before and all its members are still in place."""
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


def _hash_matches(path: Path, digest: str, progress: Progress, algorithm: str = "md5") -> bool:
    progress.start(f"checking {path.name}", path.stat().st_size, unit="bytes")
    try:
        return hash_file(path, algorithm, progress) == digest
    finally:
        progress.finish()


def _adopt_existing(
    rf: RemoteFile, dest: Path, manifest: Manifest, progress: Progress, source: str
) -> tuple[bool, Optional[ArchiveListing]]:
    """A file already under its final name but not in the manifest: check it; (True, listing) when it is the
    source's (md5 where published; else, for an archive, readable whole)."""
    final = dest / rf.key
    if not final.is_file() or (rf.size is not None and final.stat().st_size != rf.size):
        return False, None
    listing = None
    if rf.md5 is not None:
        if not _hash_matches(final, rf.md5, progress):
            progress.note(f"{rf.key} exists but its md5 differs from the published one; downloading a verified copy")
            return False, None
        md5 = rf.md5
    elif rf.sha256 is not None:
        if _hash_matches(final, rf.sha256, progress, "sha256"):
            md5 = _md5_with_progress(final, progress)
        else:
            progress.note(f"{rf.key} exists but its sha256 differs from the published one; downloading a verified copy")
            return False, None
    elif rf.is_archive:
        try:
            listing = scan_archive(final, rf.key, progress)
        except ArchiveDamaged as exc:
            progress.note(f"{rf.key} exists but is damaged ({exc}); downloading it again")
            return False, None
        md5 = _md5_with_progress(final, progress)
    else:
        return False, None  # nothing to check it against
    manifest.record_file(rf.key, final.stat().st_size, md5, source)
    manifest.save()
    return True, listing


def _md5_with_progress(path: Path, progress: Progress) -> str:
    progress.start(f"hashing {path.name}", path.stat().st_size, unit="bytes")
    try:
        return md5_file(path, progress)
    finally:
        progress.finish()


def _check_names(files: Sequence[RemoteFile]) -> None:
    for rf in files:
        try:
            rel = safe_relative(rf.key)
        except ValueError:
            raise DownloadError(f"file name {rf.key!r} is unsafe (absolute or with '..'); refusing it") from None
        if rel.name in RESERVED_NAMES:
            raise DownloadError(f"file name {rf.key!r} is a name emorl keeps for its own bookkeeping; refusing it")


def _check_space(dest: Path, todo: Sequence[RemoteFile], manifest: Manifest) -> None:
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


def fetch_files(
    dest: Path,
    files: Sequence[RemoteFile],
    source: str,
    opts: TransferOptions,
    progress: Optional[Progress] = None,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchResult:
    """Download, verify, unpack and record `files` in `dest` (steps 1–6 of the module docstring).

    Args:
        source: what the manifest names as each file's origin (e.g. 'zenodo:4895643', 'clevrtex').

    Raises:
        DownloadError: network/DNS failure, HTTP error, checksum mismatch twice, disk full, unsafe archive.
    """
    progress = progress or NullProgress()
    dest = make_destination(dest)
    _check_names(files)
    # one fetch (or synth) per folder: two writers of one file would append to the same download
    with lock_folder(dest, "emorl data fetch", advice="wait for it to finish, or fetch into another --dest"):
        remove_stale_temp_files(dest, owned_folder=True)
        return _fetch_locked(dest, files, source, opts, progress, sleep)


def _fetch_locked(
    dest: Path,
    files: Sequence[RemoteFile],
    source: str,
    opts: TransferOptions,
    progress: Progress,
    sleep: Callable[[float], None],
) -> FetchResult:
    manifest = Manifest.load(dest)
    result = FetchResult(dest)

    if opts.recheck:  # forget what the manifest vouches for; files that still match are adopted again below
        for rf in files:
            manifest.files.pop(rf.key, None)
    todo: list[RemoteFile] = []
    listings: dict[str, ArchiveListing] = {}
    for rf in files:
        if rf.is_archive and _archive_done(manifest, rf, opts.recheck, progress):
            result.skipped.append(rf.key)
            continue
        verified = manifest.is_verified(rf.key, rf.size, rf.md5)
        if not verified:
            verified, listing = _adopt_existing(rf, dest, manifest, progress, source)
            if listing is not None:
                listings[rf.key] = listing
        if verified and not rf.is_archive:
            result.skipped.append(rf.key)
        else:
            todo.append(rf)  # to download, or a verified archive still on disk to unpack
    _check_space(dest, todo, manifest)

    for rf in todo:
        if not manifest.is_verified(rf.key, rf.size, rf.md5):
            md5, refetched, listing = _download_checked(rf, dest, opts, progress, sleep)
            manifest.record_file(rf.key, (dest / rf.key).stat().st_size, md5, source)
            manifest.save()
            result.downloaded.append(rf.key)
            result.checks[rf.key] = rf.check
            if refetched:
                result.refetched.append(rf.key)
            if listing is not None:
                listings[rf.key] = listing
        if rf.is_archive:
            archive_path = dest / rf.key
            members = extract_archive(archive_path, dest, source, manifest, progress, listing=listings.get(rf.key))
            entry = manifest.files.pop(rf.key)
            manifest.archives[rf.key] = {**entry, "members": members, "extracted": True}
            manifest.save()
            archive_path.unlink()
            result.extracted += members
            result.unpacked[rf.key] = len(members)
    return result
