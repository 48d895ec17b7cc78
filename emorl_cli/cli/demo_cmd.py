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
from emorl_cli.demo import demo_spec
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
    dataset: Annotated[
        str,
        typer.Argument(
            help="The synthetic dataset: tetrominoes (35×35, 10 minutes by default) or multi_dsprites (64×64, 20 "
            "minutes by default).",
            show_default=True,
        ),
    ] = "tetrominoes",
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Folder for data, run, results, pictures (default: emorl-demo, or emorl-demo-DATASET).",
        ),
    ] = None,
    minutes: Annotated[
        Optional[float],
        typer.Option("--minutes", "-m", help="Time budget of the whole demo (default: 10, multi_dsprites 20)."),
    ] = None,
    checkpoint: Annotated[
        Optional[Path], typer.Option("--checkpoint", help="Skip training; show this model (ours or an original .pth).")
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    data_dir: Annotated[
        Optional[Path],
        typer.Option("--data-dir", help="Where the synthetic data are made once and reused (default: OUT/data)."),
    ] = None,
) -> None:
    """Train and show EfficientMORL on synthetic Tetrominoes or Multi-dSprites on the CPU, in --minutes minutes.

    Example: emorl demo multi_dsprites --minutes 20 --set training.seed=2 --out emorl-demo-md
    """
    from emorl_cli.demo import run_demo, summary_rows

    spec = demo_spec(dataset)
    if minutes is not None and not math.isfinite(minutes):
        raise InputError(f"--minutes must be a finite number of minutes, got {minutes}; try --minutes {spec.minutes:g}")
    if minutes is not None and minutes <= 0:
        raise InputError(f"--minutes must be positive, got {minutes}; try --minutes {spec.minutes:g}")
    if out is None:
        out = Path("emorl-demo" if dataset == "tetrominoes" else f"emorl-demo-{dataset.replace('_', '-')}")

    def kept() -> str:
        from emorl_cli.training.rundir import RunDir

        runs = sorted(out.glob("run-*"))
        data = f"the data in {data_dir or out / 'data'} are kept (a rerun reuses them)"
        if not runs:
            return f"{data}; run `{stopping.rerun_command()}` again"
        newest = RunDir(runs[-1]).latest_checkpoint()
        if newest is None:
            return f"{data}, {runs[-1]} has no checkpoint yet; run `{stopping.rerun_command()}` again"
        show = stopping.rerun_command("--checkpoint", str(newest))
        return f"{data}, the model trained so far in {newest}; show it with `{show}`, or run the demo again"

    stopping.on_stop(kept)
    result = run_demo(
        out,
        dataset=dataset,
        minutes=minutes,
        checkpoint=checkpoint,
        config=config,
        overrides=overrides,
        data_dir=data_dir,
        on_stage=lambda stage: err_console.print(f"[bold]demo:[/] {stage}", highlight=False),
        progress=TrainingDisplay(),
    )
    table = Table(title=f"emorl demo {dataset}")
    table.add_column("what")
    table.add_column("value")
    for label, value in summary_rows(result):
        table.add_row(label, str(value))
    print_table(table)
