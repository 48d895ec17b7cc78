"""Run logs: `metrics.jsonl`, one JSON object per logged step (the trackers — TensorBoard, W&B, … — get the same
numbers through trackers.py).

metrics.jsonl holds two kinds of rows:

- training rows, every `training.log_every` steps: `step` is the 0-based index of the step just taken,
  with its loss, NLL, KL, MSE, learning rate, … and `seconds` (wall time of the run so far);
- evaluation rows (`"split": "test"`), every `training.eval_every` steps and at the end: `step` is the
  number of updates the evaluated weights have had (the step of `checkpoints/step_NNNNNNN.pt`), with the
  test-split `fg_ari`, `ari`, `mse`, `kl`, `nll`, `slot_spread`, `loss` (means over images), `seconds` and
  `eval_seconds`.

`seconds` counts from the start of the run and goes on across `--resume`. Every line is strict JSON: a value
that is not finite (the loss of the step that diverged, an infinite gradient norm) is written as null, so
that jq, JavaScript and pandas read the file as Python does.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from emorl_cli.files import atomic_write_text, is_write_error, open_for_writing, write_error
from emorl_cli.json_input import JsonProblem, loads_strict

log = logging.getLogger("emorl.training")
EVAL_SPLIT = "test"


def is_eval_row(row: dict[str, Any]) -> bool:
    """True for an evaluation row (test-split figures), False for a training row."""
    return row.get("split") == EVAL_SPLIT


def read_rows(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """All rows of a metrics.jsonl → (rows, torn): a cut-off last line (a run killed while appending) is
    left out and reported as `torn`; a bad line anywhere else is kept out too."""
    if not path.exists():
        return [], False
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    rows, torn = [], False
    for number, line in enumerate(lines):
        try:
            row = loads_strict(line)
        except JsonProblem:
            torn = torn or number == len(lines) - 1
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows, torn


def eval_rows(path: Path) -> list[dict[str, Any]]:
    """The evaluation rows of a metrics.jsonl, in the order written."""
    return [row for row in read_rows(path)[0] if is_eval_row(row)]


def training_rows(path: Path) -> list[dict[str, Any]]:
    """The training rows of a metrics.jsonl, in the order written."""
    return [row for row in read_rows(path)[0] if not is_eval_row(row)]


def json_line(row: dict[str, Any]) -> str:
    """One metrics.jsonl line: `row` as strict JSON, non-finite floats as null."""
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
    return json.dumps(finite, allow_nan=False) + "\n"


class MetricsLog:
    """Appends one JSON line per call; lines are flushed so a killed run keeps what it logged."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        try:
            with open_for_writing(self.path, "a") as handle:
                handle.write(json_line({"step": step, **scalars}))
        except OSError as exc:
            if is_write_error(exc):
                raise write_error(self.path, exc, "append to") from None
            raise

    def truncate_for_resume(self, start_step: int) -> list[dict[str, Any]]:
        """Keep what a run resumed at `start_step` (from checkpoint step_{start_step}) has done: training
        rows of steps < start_step and evaluation rows of weights ≤ start_step; the rest is re-logged.
        A last line cut off by a crash while appending is dropped, with a note. Returns the kept rows."""
        rows, torn = read_rows(self.path)
        if torn:
            log.warning(
                "%s: ignored its last line, which was cut off (a crash while it was written); the run goes on "
                "without it",
                self.path,
            )
        kept = [r for r in rows if r["step"] <= start_step and (is_eval_row(r) or r["step"] < start_step)]
        if self.path.exists():
            atomic_write_text(self.path, "".join(json_line(r) for r in kept))
        return kept
