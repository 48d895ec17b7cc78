"""Run logs: `metrics.jsonl` (one JSON object per logged step) and TensorBoard scalars and images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from emorl_cli.files import atomic_write_text, is_write_error, write_error

log = logging.getLogger("emorl.training")


class MetricsLog:
    """Appends one JSON line per call; lines are flushed so a killed run keeps what it logged."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, step: int, scalars: dict[str, float]) -> None:
        try:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": step, **scalars}) + "\n")
        except OSError as exc:
            if is_write_error(exc):
                raise write_error(self.path, exc, "append to") from None
            raise

    def read(self) -> list[dict]:
        """Every whole line; a line cut off by a crash while appending (or otherwise unreadable) is skipped,
        with a note."""
        if not self.path.exists():
            return []
        rows, torn = [], []
        lines = self.path.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                    raise ValueError("no step")
            except ValueError:
                torn.append(number)
                continue
            rows.append(row)
        if torn:
            where = "its last line" if torn == [len(lines)] else f"line {', '.join(map(str, torn))}"
            log.warning(
                "%s: ignored %s, which was cut off (a crash while it was written); the run goes on without it",
                self.path,
                where,
            )
        return rows

    def truncate_after(self, step: int) -> None:
        """Keep the lines logged up to `step` (a resumed run re-logs the later ones); drop torn lines."""
        if not self.path.exists():
            return
        kept = [row for row in self.read() if row["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))


class TensorBoardLog:
    """TensorBoard scalars and images of the main process (a no-op elsewhere)."""

    def __init__(self, folder: Path | None):
        self._writer = None
        if folder is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(folder))

    def scalars(self, step: int, scalars: dict[str, float]) -> None:
        if self._writer is None:
            return
        for name, value in scalars.items():
            self._writer.add_scalar(f"train/{name}", value, step)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """`image` is uint8 [H, W, 3]."""
        if self._writer is not None:
            self._writer.add_image(f"train/{name}", image, step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
