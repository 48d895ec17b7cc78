"""`emorl models list|fetch`: the checkpoints the original EfficientMORL repository publishes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from emorl_cli.cli.console import console, print_table
from emorl_cli.cli.data_cmd import RichProgress
from emorl_cli.cli.options import BackoffOpt, RetriesOpt, TimeoutOpt
from emorl_cli.published import DEFAULT_BASE_URL, DEFAULT_DEST, PUBLISHED_MODELS

app = typer.Typer(no_args_is_help=True)

DestOpt = Annotated[Path, typer.Option("--dest", help="Folder holding the downloaded checkpoints.")]


@app.command("list")
def list_models(dest: DestOpt = DEFAULT_DEST) -> None:
    """The published checkpoints: the config each needs, the original README's figures, the eval command.

    Example: emorl models list --dest models
    """
    from emorl_cli.config import load_config

    table = Table(caption="ARI as the original computes it: background excluded (emorl's FG-ARI, ×100)")
    for column in ("name", "config", "ARI", "MSE", "KL", "trained", f"in {dest}/"):
        table.add_column(column, justify="right" if column in ("ARI", "MSE", "KL") else "left")
    for model in PUBLISHED_MODELS.values():
        here = "yes" if (dest / model.file_name).is_file() else "no"
        table.add_row(
            model.name, model.config, f"{model.ari:g}", f"{model.mse:.3g}", f"{model.kl:g}", model.trained, here
        )
    print_table(table)
    for model in PUBLISHED_MODELS.values():
        data = load_config(model.config).data
        console.print(
            f"[bold]{model.name}[/]: {model.file_name} (git blob {model.git_blob})\n"
            f"  get it:   emorl models fetch {model.name} --dest {dest}\n"
            f"  its data: emorl data fetch --zenodo --dest data --only {data.test_file}\n"
            f"  compare:  {model.eval_command(dest)}",
            soft_wrap=True,
            highlight=False,
        )


@app.command()
def fetch(
    name: Annotated[str, typer.Argument(help=f"Which model: {', '.join(PUBLISHED_MODELS)}.")],
    dest: DestOpt = DEFAULT_DEST,
    base_url: Annotated[
        str, typer.Option("--base-url", help="Where the repository's files are served (a mirror or a test server).")
    ] = DEFAULT_BASE_URL,
    retries: RetriesOpt = 5,
    timeout: TimeoutOpt = 60.0,
    backoff: BackoffOpt = 1.0,
) -> None:
    """Download a published checkpoint and verify its git blob id; a mismatch is an error, never kept as NAME.

    Example: emorl models fetch tetrominoes --dest models
    """
    from emorl_cli.data.zenodo import FetchOptions
    from emorl_cli.published import fetch_model

    opts = FetchOptions(base_url=base_url, retries=retries, backoff_s=backoff, timeout_s=timeout)
    result = fetch_model(name, dest, base_url=base_url, opts=opts, progress=RichProgress())
    model = result.model
    if result.downloaded:
        note = " (refetched after a mismatch)" if result.refetched else ""
        console.print(f"[green]✓[/] {result.path} downloaded, git blob id verified{note}", highlight=False)
    else:
        console.print(f"[dim]· {result.path} already verified, skipped[/]", highlight=False)
    console.print(
        f"original README: ARI {model.ari:g}, MSE {model.mse:.3g}, KL {model.kl:g}; compare with\n"
        f"  {model.eval_command(dest)}",
        soft_wrap=True,
        highlight=False,
    )
