"""How a training run reports its progress without printing: the loop sends `TrainingStatus` snapshots to a
sink the caller provides (the CLI's draws a rich bar on a terminal and plain log lines otherwise), as the data
layer does with `emorl_cli.data.progress`.

A run bounded by steps has a meaningful step/total and time left at the current rate (`eta_seconds`). A run
with a wall-clock budget (the demo, `training.max_minutes`) ends when the budget is spent, so its status
carries the minutes spent and left instead, and no ETA: `training.iters` says nothing about when it will end.
Both carry the test FG-ARI of the last evaluation when the run evaluates as it goes (training.eval_every).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Optional, Protocol


@dataclass(frozen=True)
class TrainingStatus:
    """Where a training run stands after a step (or at its start)."""

    step: int  # updates done, earlier sessions of a resumed run included
    total: int  # training.iters
    rate: float  # updates per second in this session
    loss: float  # the loss of the last log step (NaN before the first)
    fg_ari: Optional[float]  # test FG-ARI of the last evaluation; None before one (or when it was not finite)
    seconds: float  # wall time of the run, earlier sessions included
    budget_seconds: Optional[float]  # the wall-clock budget; None for a run bounded by steps only
    log_step: bool  # a step a plain log shows: every training.log_every steps, and the last

    @property
    def seconds_left(self) -> Optional[float]:
        """What is left of the time budget (None without one)."""
        return None if self.budget_seconds is None else max(self.budget_seconds - self.seconds, 0.0)

    @property
    def eta_seconds(self) -> Optional[float]:
        """Seconds to `total` at the current rate (NaN before a rate is known); None with a time budget."""
        if self.budget_seconds is not None:
            return None
        return (self.total - self.step) / self.rate if self.rate > 0 else float("nan")


class TrainingProgress(Protocol):
    """Progress sink of a training run: `start` once, `update` after every step, `finish` at the end."""

    def start(self, status: TrainingStatus) -> None: ...

    def update(self, status: TrainingStatus) -> None: ...

    def finish(self) -> None: ...


class NullTrainingProgress:
    """Reports nothing (library default); keeps the statuses so callers and tests can read them."""

    def __init__(self) -> None:
        self.statuses: list[TrainingStatus] = []

    def start(self, status: TrainingStatus) -> None:
        self.statuses.append(status)

    def update(self, status: TrainingStatus) -> None:
        self.statuses.append(status)

    def finish(self) -> None:
        pass


class ProgressReporter:
    """The loop's side: turns steps, losses and evaluations into `TrainingStatus` updates of a sink.

    Use as a context manager; call `update(step, loss)` each step and `evaluated(row)` after evaluations.
    """

    def __init__(
        self,
        sink: Optional[TrainingProgress],
        start: int,
        total: int,
        *,
        log_every: int,
        budget_seconds: Optional[float] = None,
        seconds_before: float = 0.0,
    ):
        self.sink = sink
        self.start, self.log_every, self.seconds_before = start, log_every, seconds_before
        self._t0 = time.perf_counter()
        self._status = TrainingStatus(
            step=start,
            total=total,
            rate=0.0,
            loss=float("nan"),
            fg_ari=None,
            seconds=seconds_before,
            budget_seconds=budget_seconds,
            log_step=False,
        )

    def __enter__(self) -> ProgressReporter:
        if self.sink is not None:
            self.sink.start(self._status)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.sink is not None:
            self.sink.finish()

    def evaluated(self, row: dict[str, Any]) -> None:
        """Remember the FG-ARI of the evaluation just made (reported from now on)."""
        value = row.get("fg_ari")
        fg_ari = value if isinstance(value, float) and math.isfinite(value) else None
        self._status = replace(self._status, fg_ari=fg_ari)

    def update(self, step: int, loss: Optional[float]) -> None:
        """Report that `step` (0-based) finished, with its loss at log steps (None elsewhere: the loss reported
        stays the last logged one, so reporting never waits for the device)."""
        if self.sink is None:
            return
        done = step + 1
        elapsed = time.perf_counter() - self._t0
        self._status = replace(
            self._status,
            step=done,
            rate=(done - self.start) / elapsed if elapsed > 0 else 0.0,
            loss=self._status.loss if loss is None else loss,
            seconds=self.seconds_before + elapsed,
            log_step=step % self.log_every == 0 or done == self._status.total,
        )
        self.sink.update(self._status)
