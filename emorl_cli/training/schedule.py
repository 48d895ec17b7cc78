"""The original's learning-rate schedule (GradualWarmupScheduler with multiplier 1, then exponential decay)."""

from __future__ import annotations


def lr_factor(step: int, warmup: int, decay_rate: float = 0.5, decay_steps: int = 100_000) -> float:
    """Multiplier on the base learning rate for the update made at `step`.

    Linear warm-up from 0 over `warmup` steps (step/warmup, so step 0 makes no update, as in the original),
    then decay_rate^((step − warmup)/decay_steps).
    """
    if warmup > 0 and step <= warmup:
        return step / warmup
    return decay_rate ** ((step - warmup) / decay_steps)
