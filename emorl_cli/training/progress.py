"""Progress display of a training run: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainingProgress:
    """Shows step, it/s, loss and ETA. Use as a context manager; call `update(step, scalars)` each step."""

    def __init__(self, start: int, total: int, *, enabled: bool, interactive: bool, log_every: int):
        self.start, self.total = start, total
        self.enabled, self.interactive, self.log_every = enabled, interactive, log_every
        self.console = Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None
        self._t0 = time.perf_counter()
        self._loss = float("nan")

    def __enter__(self) -> TrainingProgress:
        if self.enabled and self.interactive:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.2f} it/s  loss {task.fields[loss]:.4g}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total, completed=self.start, rate=0.0, loss=0.0)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, step: int, loss: float | None) -> None:
        """Report that `step` (0-based) finished, with its loss at log steps (None elsewhere: the loss shown
        stays the last logged one, so the display never waits for the device)."""
        if not self.enabled:
            return
        if loss is None:
            loss = self._loss
        self._loss = loss
        done = step + 1
        elapsed = time.perf_counter() - self._t0
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        if self._progress is not None:
            self._progress.update(self._task, completed=done, rate=rate, loss=loss)
        elif step % self.log_every == 0 or done == self.total:
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            self.console.print(
                f"step {done}/{self.total}  {rate:.2f} it/s  loss {loss:.4g}  eta {eta:.0f}s", highlight=False
            )
