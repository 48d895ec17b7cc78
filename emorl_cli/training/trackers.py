"""Experiment trackers through Accelerate: TensorBoard by default, Weights & Biases, MLflow, Comet, Aim,
ClearML, DVCLive, … by name (`training.log_with`), and any `GeneralTracker` registered with Accelerate's
`register_tracker_class`.

What a run sends them (the main process only):

- training scalars at the log steps, as `train/loss`, `train/nll`, … — the values of metrics.jsonl's training
  rows, at their `step`;
- evaluation rows as `eval/fg_ari`, `eval/ari`, … at the number of updates the weights have had;
- the inference figure as the image `train/inference` every `training.image_every` steps, to the trackers
  that take images (TensorBoard, W&B, Aim, ClearML, SwanLab);
- the resolved config once, flattened to dotted keys (`training.lr`), as the run's hyperparameters.

TensorBoard writes to RUN/tb as before; the others where their own settings say (W&B: its project `emorl`
and the run folder's name; MLflow: the experiment `emorl` at MLFLOW_TRACKING_URI). A tracker's package is
optional: naming one that is not installed stops the run before it starts, with the `pip install` to run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emorl_cli.errors import ConfigError, TrainingError
from emorl_cli.files import inner_folder

log = logging.getLogger("emorl.training")

PROJECT = "emorl"
# Accelerate's built-in trackers: the module each needs, and what to pip install for it
PACKAGES = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "comet_ml": (("comet_ml",), "comet-ml"),
    "aim": (("aim",), "aim"),
    "clearml": (("clearml",), "clearml"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
    "trackio": (("trackio",), "trackio"),
}


def _registered() -> dict[str, Any]:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return LOGGER_TYPE_TO_CLASS


def check_trackers(names: Sequence[str]) -> None:
    """A one-line error for a tracker Accelerate does not know, or whose package is not installed."""
    known = _registered()
    for name in names:
        if name not in known:
            raise ConfigError(
                f"training.log_with names {name!r}, which Accelerate does not know; use some of "
                f"{', '.join(sorted(known))} (or [] for metrics.jsonl only)"
            )
        modules, package = PACKAGES.get(name, ((), ""))
        if modules and not any(importlib.util.find_spec(m) is not None for m in modules):
            raise ConfigError(
                f"training.log_with names {name!r}, but its package is not installed; run `pip install {package}` "
                f"or leave {name} out (--log-with tensorboard, or --log-with none for metrics.jsonl only)"
            )


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'training': {'lr': 1e-3}} → {'training.lr': 1e-3}; lists and None as JSON text (what every tracker
    takes as a hyperparameter)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def _make(name: str, run_dir: Path) -> Any:
    """Accelerate's tracker of this name, set to log beside the run (TensorBoard in RUN/tb, as always)."""
    cls = _registered()[name]
    if name == "tensorboard":
        inner_folder(run_dir, "tb")  # never a link planted in its place
        return cls("tb", str(run_dir))  # → RUN/tb
    if name == "wandb":
        return cls(PROJECT, name=run_dir.name, dir=str(run_dir))
    if name == "mlflow":
        return cls(PROJECT, run_name=run_dir.name)
    if name == "dvclive":
        return cls(run_dir.name, dir=str(run_dir / "dvclive"))
    if cls.requires_logging_directory:
        return cls(PROJECT, str(run_dir))
    return cls(PROJECT)


class RunTrackers:
    """The trackers of one run (none on processes other than the main one)."""

    def __init__(self, trackers: Sequence[Any] = ()):
        self.trackers = list(trackers)

    @classmethod
    def start(cls, names: Sequence[str], run_dir: Path, config: dict[str, Any]) -> RunTrackers:
        """Start the named trackers and give them the run's config (see the module docstring)."""
        check_trackers(names)
        started = cls()
        try:
            for name in names:
                tracker = _make(name, run_dir)
                try:
                    tracker.start()
                    tracker.store_init_configuration(flat_config(config))
                except Exception as exc:  # a tracker's own failure (no login, no server): one line
                    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                    raise TrainingError(
                        f"the {name} tracker did not start ({type(exc).__name__}: {reason}); check its settings "
                        "or leave it out of training.log_with"
                    ) from None
                started.trackers.append(tracker)
        except BaseException:
            started.finish()
            raise
        return started

    def scalars(self, step: int, values: dict[str, Any], prefix: str) -> None:
        """Numbers as PREFIX/NAME at `step` (anything else in `values` is left out)."""
        numbers = {
            f"{prefix}/{k}": float(v)
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if numbers:
            for tracker in self.trackers:
                tracker.log(numbers, step=step)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """`image` uint8 [H, W, 3] to every tracker that takes images."""
        for tracker in self.trackers:
            if not hasattr(tracker, "log_images"):
                continue
            if tracker.name == "tensorboard":
                tracker.log_images({name: image[None]}, step=step, dataformats="NHWC")  # [1, H, W, 3]
            else:
                tracker.log_images({name: [image]}, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            try:
                tracker.finish()
            except Exception as exc:  # closing must not hide the run's own outcome
                log.warning("the %s tracker did not close cleanly (%s)", tracker.name, exc)
        self.trackers = []
