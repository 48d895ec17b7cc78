"""The one rich console every command prints through, and helpers for the run summary."""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def debug_enabled() -> bool:
    """True when tracebacks should be shown (`--debug` or EMORL_DEBUG=1)."""
    return os.environ.get("EMORL_DEBUG", "") not in ("", "0")


def is_interactive() -> bool:
    """True on a terminal, where progress bars are drawn; plain log lines otherwise."""
    return sys.stderr.isatty()


# Width for tables when the output is not a terminal (a pipe, a file): wide enough never to cut names.
PIPE_WIDTH = 200


def print_table(table: Table) -> None:
    """Print a table; in a pipe or file at PIPE_WIDTH columns, where rich would otherwise cut at 80."""
    if console.is_terminal:
        console.print(table)
    else:
        Console(file=console.file, width=PIPE_WIDTH, color_system=None).print(table)


class NoteHandler(logging.Handler):
    """Prints the library's warnings (logger `emorl`) as one yellow `note:` line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            err_console.print(f"[yellow]note:[/] {escape(record.getMessage())}", highlight=False, soft_wrap=True)
        except Exception:  # a note must never break a command
            self.handleError(record)


def show_library_notes() -> None:
    """Route the library's warnings to the terminal (once per process)."""
    logger = logging.getLogger("emorl")
    if not any(isinstance(h, NoteHandler) for h in logger.handlers):
        logger.addHandler(NoteHandler(logging.WARNING))
        logger.setLevel(logging.WARNING)
