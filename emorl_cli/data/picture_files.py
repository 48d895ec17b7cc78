"""The one place emorl opens a picture file it was given (`data import`, ClevrTex's PNGs).

A picture's size is read from its header before any pixel is decoded, and one past MAX_PIXELS is refused
with one line: a small file can claim a huge canvas (a 1.3 MB PNG of 13300×13300 decodes to 2.1 GB), and
emorl resizes every picture to at most 1024 pixels a side anyway. Pillow's own warnings (its
DecompressionBombWarning, a damaged EXIF block) never reach the terminal raw: the pixel limit stops the
first before Pillow would warn, and any other becomes a one-line note on the `emorl` logger.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from emorl_cli.errors import DataError

# Largest picture opened, in pixels (width × height): a 100-megapixel camera's frame; 300 MB decoded as RGB.
MAX_PIXELS = 100_000_000

log = logging.getLogger("emorl.data")


def open_picture(path: Path, what: str, advice: str, *, upright: bool = False) -> Image.Image:
    """The picture at `path`, decoded, or a one-line `DataError`.

    Args:
        path: the file.
        what: what it is, for the message ('image', 'mask', 'ClevrTex image').
        advice: what to do when it cannot be read, e.g. 'replace the file or remove it from the folder'.
        upright: turn the picture by its EXIF orientation (photos).

    Raises:
        DataError: the file is no picture Pillow can read, is damaged, or has more than MAX_PIXELS pixels.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > MAX_PIXELS:
                    raise DataError(
                        f"{what} {path} is {width}x{height} pixels ({width * height / 1e6:.3g} megapixels), more "
                        f"than the {MAX_PIXELS / 1e6:.3g} megapixels emorl opens; scale it down first (emorl "
                        "stores at most 1024 pixels a side)"
                    )
                opened.load()
                picture = ImageOps.exif_transpose(opened) if upright else opened
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read {what} {path} ({exc}); {advice}") from None
    for warning in caught:
        text = " ".join(str(warning.message).split())
        log.warning("%s %s: %s", what, path, text)
    return picture
