"""A pace check for runs with a time budget: say early when this machine cannot reach a figure's steps in it.

The demo's budget is minutes, but what the model learns depends on the steps it makes, and CPUs differ by
several times here (a CPU with native bf16 makes about 1,900 Tetrominoes demo steps in 10 minutes on one
core, an AVX2-only one about 300). `PaceCheck` wraps the demo's progress sink: once training has run for
`settle_seconds`, it projects the steps the budget will give at the current rate and, if they fall short of
the steps the published figure needed, notes once how many minutes this machine would need instead.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

from emorl_cli.training.progress import TrainingProgress, TrainingStatus

log = logging.getLogger("emorl")


class PaceCheck:
    """A `TrainingProgress` that forwards every status to `inner` and notes a slow pace once.

    `reference_steps`: the steps behind the figure `reference` describes; `extra_seconds`: the demo's time
    outside training (data, evaluation, pictures), added to the minutes it proposes.
    """

    def __init__(
        self,
        inner: Optional[TrainingProgress],
        reference_steps: int,
        reference: str,
        *,
        extra_seconds: float = 0.0,
        settle_seconds: float = 45.0,
    ):
        self.inner = inner
        self.reference_steps, self.reference = reference_steps, reference
        self.extra_seconds, self.settle_seconds = extra_seconds, settle_seconds
        self.checked = False
        self.note: Optional[str] = None

    def start(self, status: TrainingStatus) -> None:
        if self.inner is not None:
            self.inner.start(status)

    def update(self, status: TrainingStatus) -> None:
        if self.inner is not None:
            self.inner.update(status)
        if not self.checked and status.seconds >= self.settle_seconds and status.rate > 0:
            self.checked = True
            self._check(status)

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()

    def _check(self, status: TrainingStatus) -> None:
        left = status.seconds_left
        if left is None:
            return
        projected = status.step + status.rate * left
        if projected >= self.reference_steps:
            return
        needed = status.seconds + (self.reference_steps - status.step) / status.rate + self.extra_seconds
        minutes = math.ceil(needed / 60.0)
        self.note = (
            f"this machine makes {status.rate:.2f} training steps per second: about {projected:,.0f} steps in "
            f"this budget, while {self.reference} came after about {self.reference_steps:,} steps; for that "
            f"here, run the demo with --minutes {minutes} (or on a CPU with native bf16, AVX-512 BF16 or AMX)"
        )
        log.warning(self.note)
