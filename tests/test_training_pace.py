"""The pace check of time-budgeted runs (the demo): a note, once, when the budget cannot reach a figure's steps."""

from __future__ import annotations

import math

from emorl_cli import demo as demo_module
from emorl_cli.training.pace import PaceCheck
from emorl_cli.training.progress import NullTrainingProgress, TrainingStatus


def status(step: int, seconds: float, rate: float, budget: float = 600.0) -> TrainingStatus:
    return TrainingStatus(step, 100_000, rate, float("nan"), None, seconds, budget, False)


def run(check: PaceCheck, statuses: list[TrainingStatus], caplog) -> list[str]:
    with caplog.at_level("WARNING", logger="emorl"):
        check.start(statuses[0])
        for s in statuses[1:]:
            check.update(s)
        check.finish()
    return [r.getMessage() for r in caplog.records if r.name == "emorl"]


def test_a_slow_machine_is_told_how_many_minutes_reach_the_figure(caplog):
    inner = NullTrainingProgress()
    check = PaceCheck(inner, 1_850, "the figure", extra_seconds=60.0, settle_seconds=45.0)
    # 0.5 steps per second: 25 steps at 50 s, 550 s left -> 300 steps in all, far short of 1,850
    notes = run(check, [status(0, 0, 0), status(20, 40, 0.5), status(25, 50, 0.5), status(30, 60, 0.5)], caplog)
    assert len(notes) == 1  # once, however many statuses follow
    needed_minutes = math.ceil((50 + (1_850 - 25) / 0.5 + 60) / 60)
    assert f"--minutes {needed_minutes}" in notes[0]
    assert "about 300 steps" in notes[0] and "1,850 steps" in notes[0] and "the figure" in notes[0]
    assert len(inner.statuses) == 4  # every status reaches the display


def test_a_fast_machine_or_a_long_budget_gets_no_note(caplog):
    fast = PaceCheck(None, 1_850, "the figure", settle_seconds=45.0)
    assert run(fast, [status(0, 0, 0), status(200, 50, 4.0)], caplog) == []  # 200 + 4 * 550 > 1,850
    slow_but_long = PaceCheck(None, 1_850, "the figure", settle_seconds=45.0)
    assert run(slow_but_long, [status(0, 0, 0), status(25, 50, 0.5, budget=4_000)], caplog) == []
    assert fast.note is None and slow_but_long.note is None


def test_the_rate_is_not_judged_before_training_settles(caplog):
    check = PaceCheck(None, 1_850, "the figure", settle_seconds=45.0)
    assert run(check, [status(0, 0, 0), status(2, 10, 0.2), status(5, 30, 0.2)], caplog) == []
    assert not check.checked


def test_only_demos_with_a_published_figure_check_their_pace():
    assert demo_module.DEMOS["tetrominoes"].reference_steps == 1_850
    assert demo_module.DEMOS["multi_dsprites"].reference_steps is None
