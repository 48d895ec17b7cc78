"""How data functions report progress without printing: the CLI passes an object with these methods."""

from __future__ import annotations

from typing import Optional, Protocol


class Progress(Protocol):
    """Progress sink. `start` a task (bytes or images), `advance` it, `finish` it; `note` one line of news."""

    def start(self, description: str, total: Optional[int], *, unit: str = "bytes", completed: int = 0) -> None: ...

    def advance(self, amount: int) -> None: ...

    def finish(self) -> None: ...

    def note(self, text: str) -> None: ...


class NullProgress:
    """Reports nothing (library default); keeps the notes so callers and tests can read them."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def start(self, description: str, total: Optional[int], *, unit: str = "bytes", completed: int = 0) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def note(self, text: str) -> None:
        self.notes.append(text)


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
