"""The training loop: data order, run folder, logs, checkpoints and resume around `StepRunner`.

A checkpoint named step_S holds the state after S updates; resuming it runs step S next, with the same
data (order.py), the same noise (noise.py) and the restored weights, optimizer, GECO and schedule, so an
interrupted run continues exactly as an uninterrupted one.

A run ends after `training.iters` updates or when its wall-clock budget (`training.max_minutes`, or the
`max_seconds` a workflow such as the demo gives) is spent, summed over resumes; it then writes
`finished.json` saying which. With `training.eval_every` it evaluates on the test split as it goes
(periodic_eval.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from pydantic import ValidationError
from torch.utils.data import DataLoader

from emorl_cli.accelerator import make_accelerator
from emorl_cli.checkpoint import load_checkpoint, save_checkpoint
from emorl_cli.config import Config, ModelConfig, config_to_dict
from emorl_cli.data.batches import collate_batch
from emorl_cli.data.dataset import check_slots_cover_entities, open_split
from emorl_cli.errors import CheckpointError, OutputError, TrainingError
from emorl_cli.files import atomic_write_json, atomic_write_text, inner_folder, open_for_writing
from emorl_cli.training.images import training_figure
from emorl_cli.training.memory import check_training_memory
from emorl_cli.training.order import GlobalBatchOrder, StepBatchSampler
from emorl_cli.training.periodic_eval import BEST_NAME, PeriodicEvaluation
from emorl_cli.training.precision import check_supported
from emorl_cli.training.progress import ProgressReporter, TrainingProgress
from emorl_cli.training.run_lock import lock_run_folder
from emorl_cli.training.run_logs import MetricsLog
from emorl_cli.training.rundir import RunDir
from emorl_cli.training.step import NonFiniteLoss, Scalars, StepRunner
from emorl_cli.training.trackers import RunTrackers, check_trackers


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    run_dir: Path
    start_step: int
    steps: int
    last_checkpoint: Path
    seconds: float
    final_scalars: dict[str, float]
    last_eval: Optional[dict[str, Any]] = None


class Trainer:
    """One training run: build everything once, then `run()`.

    Options: `data_dir` overrides data.data_dir; `resume` continues the newest checkpoint of `run_dir`; `cpu`
    trains on the CPU even with a GPU; `progress` is the sink the run reports to (`training.progress`; None:
    nothing is reported) and `show_progress=False` silences it; `record_ranks` writes per-process sample
    indices and GECO state (multi-process tests); `max_seconds` is a wall-clock budget (else
    training.max_minutes).
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        *,
        data_dir: Optional[Path] = None,
        resume: bool = False,
        cpu: bool = False,
        show_progress: bool = True,
        progress: Optional[TrainingProgress] = None,
        record_ranks: bool = False,
        max_seconds: Optional[float] = None,
    ):
        self.cfg = cfg
        self.run_dir = RunDir(Path(run_dir))
        self.accelerator = make_accelerator(cfg.training.mixed_precision, cpu=cpu)
        check_supported(cfg.training.mixed_precision, self.accelerator.device)
        self.main = self.accelerator.is_main_process
        # progress goes to the caller's sink (the CLI draws it), from the main process only
        self.progress = progress if show_progress and self.main else None
        self.record_ranks = record_ranks
        minutes = cfg.training.max_minutes
        self.max_seconds = max_seconds if max_seconds is not None else (minutes * 60.0 if minutes else None)
        self.seconds_before = 0.0  # wall time of the run before this session (resumed runs)
        check_trackers(cfg.training.log_with)  # a tracker's missing package stops the run before it starts
        # one run per folder: a second `train` (or `--resume`) on it while this one runs is refused
        self._lock = lock_run_folder(self.run_dir.root, self.accelerator, (self.run_dir.checkpoints,))
        try:
            per_process = max(1, cfg.training.batch_size // self.accelerator.num_processes)
            check_training_memory(cfg, self.accelerator.device, per_process)  # before anything is allocated
            self.dataset = open_split(cfg.data, "train", data_dir, load_masks=False, load_factors=False)
            check_slots_cover_entities(self.dataset, cfg.model.K, cfg.data.dataset)
            self.order = GlobalBatchOrder(len(self.dataset), cfg.training.batch_size, cfg.training.seed)
            self.runner = StepRunner(cfg, self.accelerator)
            best = self.run_dir.checkpoints / BEST_NAME
            self.evaluation = PeriodicEvaluation(cfg, data_dir, best, self.accelerator)
            self.start_step = self._resume() if resume else self._fresh()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give up the run folder (at the end of `run()`, or when setting up failed)."""
        if self._lock is not None:
            self._lock.release()

    # ---------------------------------------------------------------------------------------- set-up

    def _write_config(self) -> None:
        atomic_write_text(self.run_dir.config, yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))

    def _fresh(self) -> int:
        if self.run_dir.latest_checkpoint() is not None:
            raise TrainingError(
                f"run folder {self.run_dir.root} already holds checkpoints; pass --resume to continue it "
                f"or --out NEW_FOLDER for a new run"
            )
        if self.main:
            inner_folder(self.run_dir.root, self.run_dir.checkpoints.name)
            self._write_config()
            for stale in (self.run_dir.metrics, self.run_dir.finished, self.run_dir.checkpoints / BEST_NAME):
                stale.unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        return 0

    def _resume(self) -> int:
        if self.run_dir.checkpoints.exists() or self.run_dir.checkpoints.is_symlink():
            inner_folder(self.run_dir.root, self.run_dir.checkpoints.name)  # never a link planted in its place
        latest = self.run_dir.latest_checkpoint()
        if latest is None:
            raise TrainingError(
                f"nothing to resume in {self.run_dir.root}: no checkpoints/step_*.pt; start without --resume"
            )
        try:
            state = load_checkpoint(latest)
        except CheckpointError as exc:
            earlier = [path for _, path in self.run_dir.list_checkpoints()[:-1]]
            tip = f"; to resume from {earlier[-1].name} instead, move {latest.name} away" if earlier else ""
            raise TrainingError(f"cannot resume: {exc}{tip}") from None
        if not same_model(state["config"]["model"], self.cfg.model):
            raise TrainingError(
                f"the model section of the config differs from the one in {latest}; resume with the same "
                f"model settings (only data, training and eval fields may change)"
            )
        self.runner.load_state_dict(state)
        step = int(state["step"])
        if self.main:
            self._write_config()
            self.run_dir.finished.unlink(missing_ok=True)
            kept = MetricsLog(self.run_dir.metrics).truncate_for_resume(step)
            self.seconds_before = max((float(r.get("seconds", 0.0)) for r in kept), default=0.0)
            self.evaluation.restore(kept)
        self.seconds_before = self._broadcast(self.seconds_before)
        return step

    def _broadcast(self, value: float) -> float:
        """The main process's value on every process (resume bookkeeping read from the run folder)."""
        if self.runner.world == 1:
            return value
        from accelerate.utils import broadcast

        return float(broadcast(torch.tensor([value], device=self.runner.device))[0])

    # ---------------------------------------------------------------------------------------- pieces

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """This process's batches from `start_step` on, loaded by `training.num_workers` workers (pinned on a
        GPU, so the copy to the device does not wait)."""
        steps = range(self.start_step, self.cfg.training.iters)
        runner = self.runner
        loader = DataLoader(
            self.dataset,
            batch_sampler=StepBatchSampler(self.order, steps.start, steps.stop, runner.rank, runner.world),
            collate_fn=collate_batch,
            num_workers=self.cfg.training.num_workers,
            pin_memory=runner.device.type == "cuda",
        )
        for step, batch in zip(steps, loader, strict=True):
            if self.record_ranks:
                with open_for_writing(self.run_dir.root / f"samples_rank{runner.rank}.txt", "a") as handle:
                    handle.write(f"{step} " + " ".join(map(str, batch["index"].tolist())) + "\n")
            yield batch

    def _save(self, done: int) -> Path:
        self.runner.check_finite()  # never save weights a non-finite loss has touched
        path = self.run_dir.checkpoint_path(done)
        if self.main:
            save_checkpoint(path, config=config_to_dict(self.cfg), step=done, rng=True, **self.runner.state_dict())
            self.run_dir.prune(self.cfg.training.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return path

    def _log_images(self, step: int, images: torch.Tensor, trackers: RunTrackers) -> None:
        model = self.runner.model
        model.eval()
        with torch.no_grad():
            trackers.image(step, "train/inference", training_figure(model, images[:4], self.cfg))
        model.train()

    # ---------------------------------------------------------------------------------------- run

    def run(self) -> TrainResult:
        t = self.cfg.training
        metrics = MetricsLog(self.run_dir.metrics)
        try:
            trackers = self._start_trackers()
        except BaseException:
            self.release()
            raise
        started = time.perf_counter()
        scalars: Scalars = {}
        last_eval: Optional[dict[str, Any]] = None
        last = self.run_dir.latest_checkpoint()
        step = self.start_step - 1
        stop_step = self.start_step if self._out_of_time(started) else t.iters  # a spent budget: nothing to do
        self.runner.model.train()
        try:
            with ProgressReporter(
                self.progress,
                self.start_step,
                t.iters,
                log_every=t.log_every,
                budget_seconds=self.max_seconds,
                seconds_before=self.seconds_before,
            ) as progress:
                for step, batch in zip(range(self.start_step, stop_step), self._batches(), strict=False):
                    images = batch["imgs"].to(self.runner.device, non_blocking=True)
                    scalars = self.runner(step, images)  # not read: the host does not wait for the device
                    done = step + 1
                    logged = None
                    if step % t.log_every == 0 or done == t.iters:
                        logged = self.runner.read(scalars)  # on every process: all stop on a non-finite loss
                        if self.main:
                            metrics.write(step, {**logged, "seconds": self._seconds(started)})
                            trackers.scalars(step, logged, prefix="train")
                    if self.main and step % t.image_every == 0:
                        self._log_images(step, images, trackers)
                    stopping = done == t.iters or self._out_of_time(started)
                    if self.evaluation.due(done, stopping):
                        last_eval = self._evaluate(done, started, metrics, trackers)
                        progress.evaluated(last_eval)
                    progress.update(step, logged["loss"] if logged else None)
                    if done % t.checkpoint_every == 0 or done == t.iters:
                        last = self._save(done)
                    if stopping:
                        break
            if last != self.run_dir.checkpoint_path(step + 1):  # stopped early, or nothing to do
                last = self._save(step + 1)
            final = self.runner.read(scalars) if scalars else {}
            self._mark_finished(step + 1, started)
        except NonFiniteLoss as exc:
            keep = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise TrainingError(f"{exc}; stopped, {keep}; lower training.lr or check the data") from None
        except OutputError as exc:
            keep = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise TrainingError(f"{exc} (stopped at step {step + 1}; {keep}, continue with --resume)") from None
        finally:
            trackers.finish()
            if self.runner.world > 1:
                self.accelerator.end_training()
            if self.record_ranks and self.runner.geco is not None:
                atomic_write_json(
                    self.run_dir.root / f"geco_rank{self.runner.rank}.json",
                    {k: float(v) for k, v in self.runner.geco.state_dict().items()},
                )
            self.release()
        return TrainResult(
            run_dir=self.run_dir.root,
            start_step=self.start_step,
            steps=step + 1 - self.start_step,
            last_checkpoint=last,
            seconds=time.perf_counter() - started,
            final_scalars=final,
            last_eval=last_eval,
        )

    def _seconds(self, started: float) -> float:
        """Wall time of the run so far, earlier sessions of a resumed run included."""
        return self.seconds_before + time.perf_counter() - started

    def _start_trackers(self) -> RunTrackers:
        """The trackers of training.log_with (trackers.py), on the main process; none elsewhere."""
        if not self.main:
            return RunTrackers()
        return RunTrackers.start(self.cfg.training.log_with, self.run_dir.root, config_to_dict(self.cfg))

    def _evaluate(self, done: int, started: float, metrics: MetricsLog, trackers: RunTrackers) -> dict[str, Any]:
        """Score the weights after `done` updates on the test split; log the row (main process)."""
        self.runner.check_finite()  # never score (or keep as best.pt) weights a non-finite loss has touched
        row = self.evaluation(self.runner.model, self.runner.geco, done)
        if self.main:
            metrics.write(done, {**row, "seconds": self._seconds(started)})
            trackers.scalars(done, {k: v for k, v in row.items() if isinstance(v, float)}, prefix="eval")
        return row

    def _mark_finished(self, done: int, started: float) -> None:
        """finished.json when the run reached `iters` or spent its budget (not when it was interrupted)."""
        if done >= self.cfg.training.iters:
            reason = "iters"
        elif self._out_of_time(started):
            reason = "time budget"
        else:
            return
        if self.main:
            atomic_write_json(
                self.run_dir.finished, {"step": done, "reason": reason, "seconds": self._seconds(started)}
            )

    def _out_of_time(self, started: float) -> bool:
        """True when a time budget is set and spent (every process agrees, so all stop at the same step)."""
        if self.max_seconds is None:
            return False
        if self.runner.world == 1:  # no tensor: nothing to wait for
            return self._seconds(started) >= self.max_seconds
        spent = torch.tensor(float(self._seconds(started) >= self.max_seconds), device=self.runner.device)
        if self.runner.world > 1:
            spent = self.accelerator.reduce(spent, reduction="sum")
        return bool(spent > 0)


def same_model(stored: dict[str, Any], model: ModelConfig) -> bool:
    """Whether a checkpoint's model section describes `model`; fields the checkpoint predates count with
    their defaults (which keep the model it was trained as), so runs of an older emorl still resume."""
    try:
        stored = ModelConfig.model_validate(stored).model_dump(mode="json")
    except ValidationError:
        return False
    return stored == model.model_dump(mode="json")


def train(cfg: Config, run_dir: Path, **options: Any) -> TrainResult:
    """Train `cfg` into `run_dir` (see `Trainer` for the options)."""
    return Trainer(cfg, run_dir, **options).run()
