"""Options shared by several commands, declared once (Typer `Annotated` aliases)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from emorl_cli.config import BATCH_MAX, SEED_MAX, SIZE_LIMITS
from emorl_cli.errors import InputError

# The kinds of number options, each with its range (checked by `in_range` while the command line is parsed,
# before any work): a seed is an unsigned 32-bit integer (numpy, torch and the .h5 files all take it); torch
# threads stop at a few per logical CPU (beyond, they only contend, and a huge count crashes the process);
# a traversal has at most MAX_FRAMES frames (the original draws 8; a GIF of 1000 frames plays for minutes).
MAX_THREADS = 4 * (os.cpu_count() or 1)
# Where the global `emorl --threads N` is kept for the commands below it (click's context meta).
THREADS_KEY = "emorl.threads"
MAX_FRAMES = 1000
MAX_BATCH = BATCH_MAX  # images per forward pass (see config.py)


def _shown(value: float) -> str:
    """A number as the user typed it: integers in full (4294967296, not 4.29497e+09), floats short."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def in_range(meaning: str, minimum: float, maximum: Optional[float] = None) -> Callable[..., Any]:
    """A Typer option callback refusing a value below `minimum`, above `maximum`, or not finite, with one line
    (what the option is, the allowed range, the value seen) and exit code 1. None (option not given) passes."""

    def check(ctx, param, value):  # noqa: ANN001 (click's callback order: context, parameter, value)
        if value is None:
            return value
        name = param.opts[0] if param.opts else str(param.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{name} must be a finite number ({meaning}), got {value}")
        if value < minimum:
            raise InputError(f"{name} must be at least {_shown(minimum)} ({meaning}), got {_shown(value)}")
        if maximum is not None and value > maximum:
            raise InputError(f"{name} must be at most {_shown(maximum)} ({meaning}), got {_shown(value)}")
        return value

    return check


ConfigArg = Annotated[str, typer.Argument(help="A shipped config name (e.g. 'tetrominoes') or a path to a YAML file.")]
ConfigOpt = Annotated[
    Optional[str],
    typer.Option("--config", "-c", help="Config name or YAML path (needed for original .pth checkpoints)."),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config field, dotted: --set training.iters=100 (repeatable)."),
]
DataDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--data-dir",
        help="Folder holding the dataset .h5 files, or ClevrTex's variant folders (overrides data.data_dir).",
    ),
]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder.")]
CheckpointOpt = Annotated[
    Path, typer.Option("--checkpoint", help="An emorl checkpoint (.pt) or an original EfficientMORL .pth file.")
]


def seed_check() -> Callable[..., Any]:
    """The range of every --seed: 0 … SEED_MAX."""
    return in_range(f"a random seed, 0 to {SEED_MAX}", 0, SEED_MAX)


def threads_check() -> Callable[..., Any]:
    """The range of every thread count: 1 … MAX_THREADS (a few per logical CPU of this machine)."""
    return in_range(f"CPU threads; this machine has {os.cpu_count() or 1} logical CPUs", 1, MAX_THREADS)


def image_side_check() -> Callable[..., Any]:
    """The range of an image side in pixels: 1 … the model's limit (SIZE_LIMITS['image_side'])."""
    limit, why = SIZE_LIMITS["image_side"]
    return in_range(why, 1, limit)


SeedOpt = Annotated[
    Optional[int], typer.Option("--seed", help="Random seed (defaults to the config's).", callback=seed_check())
]
BatchSizeOpt = Annotated[
    Optional[int],
    typer.Option(
        "--batch-size", help="Images per forward pass.", callback=in_range("images per forward pass", 1, MAX_BATCH)
    ),
]
IterOpt = Annotated[
    Optional[int],
    typer.Option(
        "--refinement-iters",
        "-I",
        help="Refinement steps I at test time.",
        callback=in_range("refinement steps I at test time", 0, SIZE_LIMITS["refinement_iters"][0]),
    ),
]

# The network options every download command shares (data fetch, models fetch).
RetriesOpt = Annotated[
    int, typer.Option("--retries", help="Retries per file after a network error.", callback=in_range("retries", 0))
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for the server.", callback=in_range("seconds", 0.1))
]
BackoffOpt = Annotated[
    float,
    typer.Option(
        "--backoff", help="Seconds before the first retry (doubles each time).", callback=in_range("seconds", 0.0)
    ),
]

# Experiment trackers of `train` and `sweep` (training.log_with).
LogWithOpt = Annotated[
    Optional[str],
    typer.Option(
        "--log-with",
        help="Experiment trackers, comma-separated: tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive "
        "(sets training.log_with; each needs its package); none: metrics.jsonl only.",
        metavar="TRACKERS",
    ),
]


def log_with_overrides(log_with: Optional[str]) -> list[str]:
    """--log-with wandb,mlflow → the override training.log_with=wandb,mlflow (none given: no override)."""
    return [] if log_with is None else [f"training.log_with={log_with}"]
