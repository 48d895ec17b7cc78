"""Run logs: `metrics.jsonl` (one JSON object per logged step) and TensorBoard scalars and images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class MetricsLog:
    """Appends one JSON line per call; lines are flushed so a killed run keeps what it logged."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, step: int, scalars: dict[str, float]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **scalars}) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after `step` (a resumed run re-logs them)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))


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
