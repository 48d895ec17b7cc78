"""`emorl config show|validate|convert`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from emorl_cli.cli.console import console, err_console
from emorl_cli.cli.options import ConfigArg, SetOpt
from emorl_cli.config import ConfigValidationError, dump_yaml, load_config, shipped_config_names
from emorl_cli.files import atomic_write_text
from emorl_cli.original_config import convert_original_file

app = typer.Typer(no_args_is_help=True)


@app.command()
def show(config: ConfigArg, overrides: SetOpt = None) -> None:
    """Print the resolved config as YAML (defaults filled in, overrides applied).

    Example: emorl config show tetrominoes --set training.iters=1000
    """
    typer.echo(dump_yaml(load_config(config, overrides)), nl=False)


@app.command()
def validate(config: ConfigArg, overrides: SetOpt = None) -> None:
    """Check a config; exit 1 listing every bad field.

    Example: emorl config validate my.yaml
    """
    try:
        cfg = load_config(config, overrides)
    except ConfigValidationError as exc:
        err_console.print(f"[bold red]{exc.source} is invalid:[/]", highlight=False)
        for problem in exc.problems:
            err_console.print(f"  • {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"[green]ok[/] {config}: {cfg.model.kind}, {cfg.data.dataset}, K={cfg.model.K}", highlight=False)


@app.command("list")
def list_configs() -> None:
    """List the shipped configs.

    Example: emorl config list
    """
    for name in shipped_config_names():
        typer.echo(name)


@app.command()
def convert(
    original: Annotated[Path, typer.Argument(help="An original EfficientMORL sacred JSON (train or test).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the YAML here instead of printing.")] = None,
) -> None:
    """Turn an original EfficientMORL JSON config into an emorl YAML config.

    Example: emorl config convert EfficientMORL/configs/train/tetrominoes/EMORL.json -o tetrominoes.yaml
    """
    text = dump_yaml(convert_original_file(original))
    if out is None:
        typer.echo(text, nl=False)
        return
    atomic_write_text(out, text)
    err_console.print(f"wrote {out}", highlight=False)
