"""Progress display of a training run: a rich bar on a terminal, plain log lines otherwise.

A run bounded by steps shows step/total, it/s, loss and the time left at the current rate. A run with a
wall-clock budget (the demo, `training.max_minutes`) shows the budget instead — minutes spent and left,
steps so far — since `training.iters` says nothing about when it will end. Both show the test FG-ARI of
the last evaluation when the run evaluates as it goes.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainingProgress:
    """Use as a context manager; call `update(step, loss)` each step and `evaluated(row)` after evaluations."""

    def __init__(
        self,
        start: int,
        total: int,
        *,
        enabled: bool,
        interactive: bool,
        log_every: int,
        budget_seconds: Optional[float] = None,
        seconds_before: float = 0.0,
    ):
        self.start, self.total = start, total
        self.enabled, self.interactive, self.log_every = enabled, interactive, log_every
        self.budget, self.seconds_before = budget_seconds, seconds_before
        self.console = Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None
        self._t0 = time.perf_counter()
        self._loss = float("nan")
        self._fg_ari: Optional[float] = None

    def __enter__(self) -> TrainingProgress:
        if self.enabled and self.interactive:
            if self.budget is None:
                columns: list[Any] = [MofNCompleteColumn(), TextColumn("{task.fields[rate]:.2f} it/s"), *self._tail()]
                columns.append(TimeRemainingColumn())
                total, completed = float(self.total), float(self.start)
            else:
                columns = [TextColumn("{task.fields[budget]}  step {task.fields[step]:,}"), *self._tail()]
                total, completed = self.budget, self.seconds_before
            self._progress = Progress(TextColumn("[bold]train"), BarColumn(), *columns, console=self.console)
            self._progress.__enter__()
            self._task = self._progress.add_task(
                "train", total=total, completed=completed, rate=0.0, loss=0.0, step=self.start, budget="", ari=""
            )
        return self

    @staticmethod
    def _tail() -> list[Any]:
        return [TextColumn("loss {task.fields[loss]:.4g}"), TextColumn("{task.fields[ari]}")]

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def evaluated(self, row: dict[str, Any]) -> None:
        """Remember the FG-ARI of the evaluation just made (shown from now on)."""
        value = row.get("fg_ari")
        self._fg_ari = value if isinstance(value, float) and math.isfinite(value) else None

    def _ari_text(self) -> str:
        return f"FG-ARI {self._fg_ari:.3f}" if self._fg_ari is not None else ""

    def _budget_text(self, spent: float) -> str:
        assert self.budget is not None
        left = max(self.budget - spent, 0.0)
        return f"{spent / 60:.1f} of {self.budget / 60:.1f} min ({left / 60:.1f} left)"

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
        spent = self.seconds_before + elapsed
        if self._progress is not None:
            fields = {"rate": rate, "loss": loss, "step": done, "ari": self._ari_text()}
            if self.budget is None:
                self._progress.update(self._task, completed=done, **fields)
            else:
                self._progress.update(
                    self._task, completed=min(spent, self.budget), budget=self._budget_text(spent), **fields
                )
        elif step % self.log_every == 0 or done == self.total:
            if self.budget is None:
                eta = (self.total - done) / rate if rate > 0 else float("nan")
                where = f"step {done}/{self.total}  {rate:.2f} it/s  loss {loss:.4g}  eta {eta:.0f}s"
            else:
                where = f"step {done}  {rate:.2f} it/s  loss {loss:.4g}  {self._budget_text(spent)}"
            ari = self._ari_text()
            self.console.print(where + (f"  {ari}" if ari else ""), highlight=False)
