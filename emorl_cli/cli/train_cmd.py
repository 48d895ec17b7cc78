"""`emorl train CONFIG` — one device here, N processes under `accelerate launch -m emorl_cli train CONFIG`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperCommand

from emorl_cli.cli import stopping
from emorl_cli.cli.console import console
from emorl_cli.cli.options import ConfigArg, DataDirOpt, LogWithOpt, OutOpt, SetOpt, log_with_overrides
from emorl_cli.cli.progress import TrainingDisplay
from emorl_cli.config import load_config, resolve_config_path
from emorl_cli.errors import InputError


class OptionalValueCommand(TyperCommand):
    """Lets `--resume` stand alone: with no value after it, it means "the --out folder"."""

    optional_value_options = ("--resume",)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        fixed: list[str] = []
        for i, arg in enumerate(args):
            fixed.append(arg)
            if arg in self.optional_value_options and (i + 1 == len(args) or args[i + 1].startswith("-")):
                fixed.append(USE_OUT_FOLDER)
        return super().parse_args(ctx, fixed)


USE_OUT_FOLDER = ":out:"


def default_run_dir(config: str) -> Path:
    """runs/<config name> (the YAML file's stem for a path)."""
    return Path("runs") / resolve_config_path(config).stem


def train(
    config: ConfigArg,
    data_dir: DataDirOpt = None,
    out: OutOpt = None,
    overrides: SetOpt = None,
    resume: Annotated[
        Optional[str],
        typer.Option(
            "--resume",
            help="Continue from the newest checkpoint of RUN_DIR; alone, of the --out folder.",
            metavar="[RUN_DIR]",
        ),
    ] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even when a GPU is present.")] = False,
    log_with: LogWithOpt = None,
    record_ranks: Annotated[
        bool, typer.Option("--record-ranks", hidden=True, help="Write per-process sample indices and GECO state.")
    ] = False,
) -> None:
    """Train EfficientMORL or Slot Attention; writes config.yaml, checkpoints/, tb/ and metrics.jsonl.

    Example: emorl train tetrominoes --data-dir data/synth --out runs/tetro
    """
    from emorl_cli.training.loop import train as run_training

    if resume not in (None, USE_OUT_FOLDER) and out is not None and Path(resume).absolute() != out.absolute():
        raise InputError(
            f"--resume {resume} continues that run folder, but --out {out} names another; give one of them "
            f"(`--resume {resume}`, or `--out {out} --resume`)"
        )
    cfg = load_config(config, (overrides or []) + log_with_overrides(log_with))
    run_dir = Path(resume) if resume not in (None, USE_OUT_FOLDER) else (out or default_run_dir(config))
    stopping.on_stop(
        lambda: f"{stopping.kept_checkpoint(run_dir)}; continue with `{stopping.rerun_command('--resume')}`"
    )
    result = run_training(
        cfg,
        run_dir,
        data_dir=data_dir,
        resume=resume is not None,
        cpu=cpu,
        progress=TrainingDisplay(),
        record_ranks=record_ranks,
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch / torchrun only rank 0 reports
        return
    if result.steps == 0:
        console.print(f"nothing to do: {run_dir} is already at step {result.start_step} of {cfg.training.iters}")
    final = result.final_scalars
    summary = ", ".join(f"{k} {final[k]:.4g}" for k in ("loss", "nll", "kl", "mse") if k in final)
    console.print(
        f"[green]trained[/] steps {result.start_step}→{result.start_step + result.steps} in {result.seconds:.1f}s"
        + (f" ({summary})" if summary else ""),
        highlight=False,
    )
    console.print(f"run folder: {result.run_dir}\ncheckpoint: {result.last_checkpoint}", highlight=False)
