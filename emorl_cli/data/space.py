"""Room for a file before it is written: the free disk space of its folder against its size, computed
from the counts and sizes asked for, so that `data synth --train 10000000000` or `data import` of a huge
folder stops in the first second with one line instead of filling the disk for hours."""

from __future__ import annotations

import shutil
from pathlib import Path

from emorl_cli.errors import InputError


def human(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_disk_space(folder: Path, needed: int, what: str, lower: str) -> None:
    """Refuse to write `needed` bytes (uncompressed) into `folder` when its disk has less free.

    Args:
        folder: where the file goes (its nearest existing parent is measured).
        what: the file and what sets its size, e.g. '10,000,000 training images of 35x35'.
        lower: the options that shrink it, e.g. '--train or --test'.

    Raises:
        InputError: the disk has less free space than `needed` (the message gives both numbers).
    """
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # unknown: the write itself reports a full disk with one line
    if needed > free:
        raise InputError(
            f"{what} take about {human(needed)} on disk, but {probe} has {human(free)} free; lower {lower}, "
            "or write to a disk with more room"
        )
