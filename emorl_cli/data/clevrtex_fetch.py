"""Download ClevrTex (Karazija et al., 2021) from its public host: the archives of the chosen variants.

Each variant is one archive (`full` five parts), unpacked into `dest/clevrtex_{variant}/`. The host publishes
no checksums, so every archive is read whole before it gets its final name (gzip CRC-32 and length, tar
header checksums) and again, member by member, when it is unpacked; the rest — resume with Range requests,
atomic names, safe unpacking, the manifest — is `emorl_cli.data.download`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from emorl_cli.data.download import FetchResult, RemoteFile, TransferOptions, check_url, fetch_files
from emorl_cli.data.progress import Progress
from emorl_cli.data.registry import CLEVRTEX_ARCHIVES, CLEVRTEX_BASE_URL, CLEVRTEX_VARIANTS
from emorl_cli.errors import DownloadError

SOURCE = "clevrtex"


@dataclass
class ClevrTexFetchOptions(TransferOptions):
    """Which variants (empty: all six) and from where (and how hard to try)."""

    variants: Sequence[str] = ()
    base_url: str = CLEVRTEX_BASE_URL


def clevrtex_files(variants: Sequence[str], base_url: str) -> list[RemoteFile]:
    """The archives of `variants` (all six when empty), in the order given, with their URLs under `base_url`.

    Raises:
        DownloadError: an unknown variant (the message lists the known ones) or a non-http(s) URL.
    """
    unknown = [v for v in variants if v not in CLEVRTEX_ARCHIVES]
    if unknown:
        names = ", ".join(repr(v) for v in unknown)
        raise DownloadError(f"unknown ClevrTex variant {names}; choose from {', '.join(CLEVRTEX_VARIANTS)}")
    base = check_url(base_url.rstrip("/"))
    chosen = list(dict.fromkeys(variants)) or list(CLEVRTEX_VARIANTS)
    return [RemoteFile(name, None, None, f"{base}/{name}") for v in chosen for name in CLEVRTEX_ARCHIVES[v]]


def fetch_clevrtex(
    dest: Path,
    opts: Optional[ClevrTexFetchOptions] = None,
    progress: Optional[Progress] = None,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchResult:
    """Download, check and unpack the ClevrTex archives of `opts.variants` into `dest`.

    Raises:
        DownloadError: network/DNS failure, HTTP error, an archive damaged twice, disk full, unsafe archive.
    """
    opts = opts or ClevrTexFetchOptions()
    return fetch_files(Path(dest), clevrtex_files(opts.variants, opts.base_url), SOURCE, opts, progress, sleep)
