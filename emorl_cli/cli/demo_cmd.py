"""`emorl tune-geco` and `emorl demo`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from emorl_cli.cli import stopping
from emorl_cli.cli.console import console, err_console, print_table
from emorl_cli.cli.options import ConfigArg, ConfigOpt, DataDirOpt, SetOpt
from emorl_cli.cli.progress import TrainingDisplay
from emorl_cli.config import load_config, resolve_config_path
from emorl_cli.errors import InputError


def tune_geco(
    config: ConfigArg,
    data_dir: DataDirOpt = None,
    overrides: SetOpt = None,
    pilot_steps: Annotated[
        Optional[int], typer.Option("--pilot-steps", help="Pilot length (default: 15% of training.iters).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for the pilot and the plot.")] = None,
    write_config: Annotated[
        Optional[Path], typer.Option("--write-config", help="Write a copy of the config with the target set.")
    ] = None,
) -> None:
    """Propose a GECO reconstruction target from a short pilot run without GECO (resumable, seeded).

    Example: emorl tune-geco tetrominoes --data-dir data/synth --write-config tetrominoes-tuned.yaml
    """
    from emorl_cli.tune_geco import tune_geco as run

    cfg = load_config(config, overrides)
    out_dir = out or Path("runs") / f"tune-geco-{resolve_config_path(config).stem}"
    proposal, paths = run(
        cfg,
        out_dir,
        data_dir=data_dir,
        pilot_steps=pilot_steps,
        write_config=write_config,
        progress=TrainingDisplay(),
    )
    table = Table(title=f"GECO target for {config} (pilot: {proposal.pilot_steps} steps without GECO)")
    table.add_column("NLL per pixel and channel")
    table.add_column("value", justify="right")
    table.add_row("initial", f"{proposal.initial:.4f}")
    table.add_row(f"background level (step {proposal.background_step})", f"{proposal.background:.4f}")
    table.add_row("plateau (end of pilot)", f"{proposal.plateau:.4f}")
    table.add_row("[bold]proposed geco.target[/]", f"[bold]{proposal.target:.4f}[/]")
    table.add_row("same, whole image (the original's unit)", f"{proposal.total_target:.1f}")
    print_table(table)
    for name, path in paths.items():
        console.print(f"{name}: {path}", highlight=False)


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for data, run, results and pictures.")] = Path(
        "emorl-demo"
    ),
    minutes: Annotated[float, typer.Option("--minutes", "-m", help="Time budget of the whole demo.")] = 10.0,
    checkpoint: Annotated[
        Optional[Path], typer.Option("--checkpoint", help="Skip training; show this model (ours or an original .pth).")
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Train and show EfficientMORL on synthetic Tetrominoes on the CPU, in about --minutes minutes.

    Example: emorl demo --minutes 15 --set training.seed=2 --out emorl-demo-15
    """
    from emorl_cli.demo import run_demo, summary_rows

    def kept() -> str:
        from emorl_cli.training.rundir import RunDir

        runs = sorted(out.glob("run-*"))
        data = f"the data in {out / 'data'} are kept (a rerun reuses them)"
        if not runs:
            return f"{data}; run `{stopping.rerun_command()}` again"
        newest = RunDir(runs[-1]).latest_checkpoint()
        if newest is None:
            return f"{data}, {runs[-1]} has no checkpoint yet; run `{stopping.rerun_command()}` again"
        show = stopping.rerun_command("--checkpoint", str(newest))
        return f"{data}, the model trained so far in {newest}; show it with `{show}`, or run the demo again"

    stopping.on_stop(kept)
    if not math.isfinite(minutes):
        raise InputError(f"--minutes must be a finite number of minutes, got {minutes}; try --minutes 10")
    if minutes <= 0:
        raise InputError(f"--minutes must be positive, got {minutes}; try --minutes 10")
    result = run_demo(
        out,
        minutes=minutes,
        checkpoint=checkpoint,
        config=config,
        overrides=overrides,
        on_stage=lambda stage: err_console.print(f"[bold]demo:[/] {stage}", highlight=False),
        progress=TrainingDisplay(),
    )
    table = Table(title="emorl demo")
    table.add_column("what")
    table.add_column("value")
    for label, value in summary_rows(result):
        table.add_row(label, str(value))
    print_table(table)
