"""The layout of a training run's folder.

RUN/config.yaml              the resolved config
RUN/checkpoints/step_000500.pt  checkpoints (newest k kept), written atomically
RUN/tb/                      TensorBoard events
RUN/metrics.jsonl            one JSON object per logged step (training rows and evaluation rows)
RUN/checkpoints/best.pt      the best weights by test FG-ARI (with training.eval_every)
RUN/finished.json            written when the run reached training.iters or spent its time budget
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_CKPT = re.compile(r"^step_(\d+)\.pt$")


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def finished(self) -> Path:
        return self.root / "finished.json"

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}.pt"

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every complete checkpoint, oldest first (temp files are ignored)."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := _CKPT.match(p.name))]
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        listed = self.list_checkpoints()
        return listed[-1][1] if listed else None

    def prune(self, keep: int) -> None:
        """Delete all but the newest `keep` checkpoints."""
        for _, path in self.list_checkpoints()[:-keep]:
            path.unlink(missing_ok=True)
