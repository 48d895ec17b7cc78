"""The one rich console every command prints through, and helpers for the run summary."""

from __future__ import annotations

import os
import sys

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def debug_enabled() -> bool:
    """True when tracebacks should be shown (`--debug` or EMORL_DEBUG=1)."""
    return os.environ.get("EMORL_DEBUG", "") not in ("", "0")


def is_interactive() -> bool:
    """True on a terminal, where progress bars are drawn; plain log lines otherwise."""
    return sys.stderr.isatty()
