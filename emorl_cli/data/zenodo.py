"""Download the files of a Zenodo record (the EfficientMORL .h5 files, record 4895643).

The record's file list (name, size, md5, link) comes from `{base}/api/records/{id}`; everything else —
resumable verified downloads, the zip unpacked safely, the manifest — is `emorl_cli.data.download`.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from emorl_cli.data.download import (
    FetchResult,
    RemoteFile,
    TransferOptions,
    check_url,
    fetch_files,
    open_url,
    read_blocks,
    with_retries,
)
from emorl_cli.data.manifest import Manifest
from emorl_cli.data.progress import Progress
from emorl_cli.data.registry import ZENODO_BASE_URL, ZENODO_RECORD_ID
from emorl_cli.errors import DownloadError
from emorl_cli.json_input import parse_json

__all__ = ["FetchOptions", "FetchResult", "RemoteFile", "fetch_zenodo", "list_record_files"]


@dataclass
class FetchOptions(TransferOptions):
    """Knobs of `fetch_zenodo`: which record, where, which files (and how hard to try)."""

    record: str = ZENODO_RECORD_ID
    base_url: str = ZENODO_BASE_URL
    only: Sequence[str] = ()


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
        md5, sha256 = _checksums(entry.get("checksum"))
        url = _file_url(entry, key, opts, record_url)
        out.append(RemoteFile(key, int(size) if size is not None else None, md5, url, sha256=sha256))
    return out


def _checksums(checksum: Any) -> tuple[Optional[str], Optional[str]]:
    """(md5, sha256) of a record's `checksum` field: `md5:HEX` or `sha256:HEX`, or a bare HEX (sha256 when it
    is 64 digits long, else md5); any other algorithm, or no checksum, gives (None, None) — such a file is
    checked by size only, and the fetch says so. A malformed value is kept: the check then fails, saying so."""
    if not isinstance(checksum, str) or not checksum.strip():
        return None, None
    algo, sep, value = checksum.strip().lower().partition(":")
    if not sep:
        algo, value = ("sha256" if len(algo) == 64 else "md5"), algo
    if not value:
        return None, None
    return (value if algo == "md5" else None), (value if algo == "sha256" else None)


def _get_json(url: str, opts: FetchOptions, sleep: Callable[[float], None]) -> Any:
    def action() -> Any:
        with open_url(url, opts.timeout_s, {"Accept": "application/json"}) as response:
            body = b"".join(read_blocks(response, url, opts))
        advice = "check --base-url points at a Zenodo server (and --record)"
        return parse_json(body, f"the answer of {url}", error=DownloadError, advice=advice)

    return with_retries(f"reading {url}", opts, sleep, action)


def list_record_files(opts: FetchOptions, sleep: Callable[[float], None] = time.sleep) -> list[RemoteFile]:
    """The files of Zenodo record `opts.record` (key, size, md5, download URL)."""
    base = check_url(opts.base_url.rstrip("/"))
    record_url = f"{base}/api/records/{opts.record}"
    files = _parse_files(_get_json(record_url, opts, sleep), opts, record_url)
    if not files:  # InvenioRDM also lists them under /files
        files = _parse_files(_get_json(record_url + "/files", opts, sleep) or {}, opts, record_url)
        if not files:
            raise DownloadError(f"Zenodo record {opts.record} at {record_url} lists no files; check --record")
    for rf in files:
        check_url(rf.url)
    return files


# --------------------------------------------------------------------------------------------- main


def _select(files: list[RemoteFile], only: Sequence[str], record: str) -> list[RemoteFile]:
    if not only:
        return files
    by_key = {rf.key: rf for rf in files}
    missing = [name for name in only if name not in by_key]
    if missing:
        names = ", ".join(sorted(by_key))
        zips = [rf.key for rf in files if rf.is_archive]
        tip = f"; the .h5 files come inside {', '.join(zips)} (fetch without --only)" if zips else ""
        raise DownloadError(
            f"record {record} has no file named {', '.join(repr(m) for m in missing)}; it holds: {names}{tip}"
        )
    return [by_key[name] for name in dict.fromkeys(only)]


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
    files = _select(list_record_files(opts, sleep), opts.only, opts.record)
    result = fetch_files(Path(dest), files, f"zenodo:{opts.record}", opts, progress, sleep)
    manifest = Manifest.load(result.dest)
    result.h5_folders = sorted({(result.dest / name).parent for name in manifest.files if name.endswith(".h5")})
    return result
