"""Evaluation during training (`training.eval_every`): the test split scored as `emorl eval ari` scores it.

Every `eval_every` steps and after the last step, the current weights are evaluated on the first
`eval.num_images` test images at the config's test-time I, with the objective `emorl eval ari` would use
(GECO-weighted with the current β when the run uses GECO, else the ELBO; kl_beta 1), the posterior noise
seeded by (training.seed, rank) in a forked RNG, so the training run itself is unchanged by evaluating.
Under N processes each evaluates its share and the records are gathered once.

The best weights so far are kept as `checkpoints/best.pt`: highest FG-ARI, or lowest test loss (NLL + KL)
where the test file has no ground-truth masks. best.pt is written only by the main process, beside the step
checkpoints (whose names it does not share, so it is never pruned nor resumed from).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from emorl_cli.checkpoint import load_checkpoint, save_checkpoint
from emorl_cli.config import Config, config_to_dict
from emorl_cli.evaluate.ari_report import run_ari_eval
from emorl_cli.evaluate.runner import METRICS
from emorl_cli.evaluate.session import LoadedModel, open_eval_split
from emorl_cli.training.run_logs import EVAL_SPLIT

BEST_NAME = "best.pt"


@dataclass(frozen=True)
class BestRule:
    """Which figure picks best.pt: FG-ARI (higher is better) or, without masks, the test loss (lower)."""

    metric: str
    higher_is_better: bool

    def better(self, value: Optional[float], than: Optional[float]) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if than is None:
            return True
        return value > than if self.higher_is_better else value < than


def eval_row(summary: dict[str, dict[str, float]], num_images: int, eval_seconds: float) -> dict[str, Any]:
    """The metrics.jsonl row of one evaluation (without `step` and `seconds`, which the loop adds)."""
    row: dict[str, Any] = {"split": EVAL_SPLIT, "num_images": num_images}
    for metric in METRICS:  # means over images, and their std
        if metric in summary:
            row[metric] = _finite_or_none(summary[metric]["mean"])
            row[f"{metric}_std"] = _finite_or_none(summary[metric]["std"])
    if row.get("nll") is not None and row.get("kl") is not None:
        row["loss"] = row["nll"] + row["kl"]
    row["eval_seconds"] = eval_seconds
    return row


def _finite_or_none(value: Optional[float]) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


class PeriodicEvaluation:
    """Scores the model every `training.eval_every` steps; keeps best.pt. A no-op when eval_every is 0."""

    def __init__(self, cfg: Config, data_dir: Optional[Path], best_path: Path, accelerator: Any):
        self.cfg, self.best_path, self.accelerator = cfg, Path(best_path), accelerator
        self.every = cfg.training.eval_every
        self.dataset = None
        self.rule = BestRule("fg_ari", True)
        if self.every:
            self.dataset = open_eval_split(cfg, data_dir=data_dir, load_factors=False, need_masks=False)
            if not self.dataset.load_masks:
                self.rule = BestRule("loss", False)
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None

    @property
    def enabled(self) -> bool:
        return self.dataset is not None

    def due(self, done: int, last: bool) -> bool:
        """Whether to evaluate after `done` updates (`last`: the run stops after this step)."""
        return self.enabled and (done % self.every == 0 or last)

    def restore(self, kept_rows: list[dict[str, Any]]) -> None:
        """On resume (main process): the best figure among the evaluation rows kept, and best.pt only if it
        holds that row's weights.

        best.pt written after the resumed checkpoint belongs to steps about to be retrained: it is removed,
        and the rerun (identical, evaluation included) writes it again when it gets there.
        """
        for row in kept_rows:
            if row.get("split") == EVAL_SPLIT and self.rule.better(row.get(self.rule.metric), self.best):
                self.best, self.best_step = row[self.rule.metric], int(row["step"])
        if self.best_path.exists() and int(load_checkpoint(self.best_path).get("step", -1)) != self.best_step:
            self.best_path.unlink()

    def __call__(self, model: Any, geco: Any, done: int) -> dict[str, Any]:
        """Evaluate the weights after `done` updates (every process); returns the row (on every process) and
        writes best.pt on the main process when the figure improved."""
        t = self.cfg.training
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        loaded = LoadedModel(
            model=model, cfg=self.cfg, geco_state=geco.state_dict() if geco is not None else None, checkpoint=None
        )
        try:
            report = run_ari_eval(
                loaded,
                self.dataset,
                num_images=min(self.cfg.eval.num_images, len(self.dataset)),
                batch_size=self.cfg.eval.batch_size,
                samples=1,
                refinement_iters=None,
                seed=t.seed,
                out_dir=None,
                accelerator=self.accelerator if self.accelerator.num_processes > 1 else None,
                require_masks=self.dataset.load_masks,
            )
        finally:
            model.train(was_training)
        row = eval_row(report.summary, len(report.per_image), time.perf_counter() - started)
        value = row.get(self.rule.metric)
        row["best"] = self.rule.better(value, self.best)
        if row["best"]:
            self.best, self.best_step = value, done
            if self.accelerator.is_main_process:
                save_checkpoint(
                    self.best_path,
                    model=model,
                    config=config_to_dict(self.cfg),
                    geco=geco,
                    step=done,
                    extra={"eval": {k: v for k, v in row.items() if v is not None}},
                )
        return row
