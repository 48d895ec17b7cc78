"""Options shared by several commands, declared once (Typer `Annotated` aliases)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from emorl_cli.config import SIZE_LIMITS
from emorl_cli.errors import InputError


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
            raise InputError(f"{name} must be at least {minimum:g} ({meaning}), got {value:g}")
        if maximum is not None and value > maximum:
            raise InputError(f"{name} must be at most {maximum:g} ({meaning}), got {value:g}")
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
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed (defaults to the config's).")]
BatchSizeOpt = Annotated[
    Optional[int],
    typer.Option("--batch-size", help="Images per forward pass.", callback=in_range("images per forward pass", 1)),
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
