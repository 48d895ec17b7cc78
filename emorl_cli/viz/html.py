"""A self-contained index.html (inline CSS, no scripts, nothing fetched) showing figures with their metrics."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emorl_cli.errors import EmorlError
from emorl_cli.files import atomic_write_text

__all__ = ["write_index_html", "format_metric"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.3em; }
.figure { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 0.8em; margin-bottom: 1.2em; }
.figure h2 { font-size: 1em; margin: 0 0 0.5em 0; }
.figure img { image-rendering: pixelated; max-width: 100%; }
table { border-collapse: collapse; margin-top: 0.5em; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; }
th { background: #f0f0f0; }
"""


def format_metric(value: Any) -> str:
    """A metric value for display: floats with 4 significant digits, NaN as 'n/a'."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}"
    return str(value)


def _img_src(out_dir: Path, png: str, embed: bool) -> str:
    if not embed:
        return html.escape(Path(png).as_posix(), quote=True)
    path = out_dir / png
    if not path.is_file():
        raise EmorlError(f"cannot embed {path}: no such file; write the figures before the index")
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_index_html(
    out_dir: str | Path,
    entries: Sequence[Mapping[str, Any]],
    *,
    title: str = "emorl figures",
    summary: Mapping[str, Any] | None = None,
    embed_images: bool = False,
) -> Path:
    """Write `out_dir/index.html` listing every figure with its metrics.

    Args:
        out_dir: folder holding the figures; the index is written there.
        entries: one mapping per figure: `png` (path relative to out_dir), `metrics` (name → value), and an
            optional `title` (defaults to the file name).
        title: page heading.
        summary: optional name → value table shown above the figures (e.g. mean FG-ARI).
        embed_images: inline the PNGs as base64 so that the page is one file; otherwise link them.
    Returns:
        The path of index.html.
    """
    out_dir = Path(out_dir)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if summary:
        parts.append(_table(summary))
    for entry in entries:
        png = str(entry["png"])
        heading = str(entry.get("title") or Path(png).name)
        parts += [
            '<div class="figure">',
            f"<h2>{html.escape(heading)}</h2>",
            f'<img src="{_img_src(out_dir, png, embed_images)}" alt="{html.escape(heading, quote=True)}">',
        ]
        metrics = entry.get("metrics") or {}
        if metrics:
            parts.append(_table(metrics))
        parts.append("</div>")
    parts.append("</body></html>")
    path = out_dir / "index.html"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


def _table(values: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(name))}</th><td>{html.escape(format_metric(value))}</td></tr>"
        for name, value in values.items()
    )
    return f"<table>{rows}</table>"
