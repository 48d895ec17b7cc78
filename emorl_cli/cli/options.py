"""Options shared by several commands, declared once (Typer `Annotated` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

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
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Images per forward pass.")]
