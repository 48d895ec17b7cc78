"""Progress displays: a bar over images for evaluation and picture commands (silent when not on a terminal),
and the display of a training run (a rich bar on a terminal, plain log lines otherwise)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from emorl_cli.cli.console import err_console, is_interactive
from emorl_cli.training.progress import TrainingStatus


@contextmanager
def image_progress(label: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; draws a bar on a terminal, stays silent otherwise."""
    if not (enabled and is_interactive()):
        yield lambda n: None
        return
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def _budget_text(status: TrainingStatus) -> str:
    """'3.2 of 5.0 min (1.8 left)'."""
    assert status.budget_seconds is not None and status.seconds_left is not None
    return f"{status.seconds / 60:.1f} of {status.budget_seconds / 60:.1f} min ({status.seconds_left / 60:.1f} left)"


def _ari_text(status: TrainingStatus) -> str:
    return f"FG-ARI {status.fg_ari:.3f}" if status.fg_ari is not None else ""


def training_line(status: TrainingStatus) -> str:
    """One plain log line: step/total, rate, loss and ETA — or, with a time budget, the minutes spent and left
    instead of an ETA — and the FG-ARI of the last evaluation."""
    if status.budget_seconds is None:
        where = (
            f"step {status.step}/{status.total}  {status.rate:.2f} it/s  loss {status.loss:.4g}  "
            f"eta {status.eta_seconds:.0f}s"
        )
    else:
        where = f"step {status.step}  {status.rate:.2f} it/s  loss {status.loss:.4g}  {_budget_text(status)}"
    ari = _ari_text(status)
    return where + (f"  {ari}" if ari else "")


class TrainingDisplay:
    """The training progress sink of the CLI: a rich bar on a terminal, a plain line per log step otherwise."""

    def __init__(self, interactive: Optional[bool] = None):
        self.interactive = is_interactive() if interactive is None else interactive
        self._progress: Optional[Progress] = None
        self._task: Any = None

    def start(self, status: TrainingStatus) -> None:
        if not self.interactive:
            return
        tail: list[Any] = [TextColumn("loss {task.fields[loss]:.4g}"), TextColumn("{task.fields[ari]}")]
        if status.budget_seconds is None:
            columns: list[Any] = [MofNCompleteColumn(), TextColumn("{task.fields[rate]:.2f} it/s"), *tail]
            columns.append(TimeRemainingColumn())
            total, completed = float(status.total), float(status.step)
        else:
            columns = [TextColumn("{task.fields[budget]}  step {task.fields[step]:,}"), *tail]
            total, completed = status.budget_seconds, status.seconds
        self._progress = Progress(TextColumn("[bold]train"), BarColumn(), *columns, console=err_console)
        self._progress.__enter__()
        self._task = self._progress.add_task(
            "train", total=total, completed=completed, rate=0.0, loss=0.0, step=status.step, budget="", ari=""
        )

    def update(self, status: TrainingStatus) -> None:
        if self._progress is None:
            if status.log_step:
                err_console.print(training_line(status), highlight=False)
            return
        fields = {"rate": status.rate, "loss": status.loss, "step": status.step, "ari": _ari_text(status)}
        if status.budget_seconds is None:
            self._progress.update(self._task, completed=status.step, **fields)
        else:
            completed = min(status.seconds, status.budget_seconds)
            self._progress.update(self._task, completed=completed, budget=_budget_text(status), **fields)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None
