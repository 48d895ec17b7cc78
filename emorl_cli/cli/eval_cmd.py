"""`emorl eval …` commands."""

import typer

from emorl_cli.cli.app import not_available

app = typer.Typer(no_args_is_help=True)


@app.command()
def ari() -> None:
    """FG-ARI, ARI, MSE, KL of a checkpoint on a test split."""
    not_available("eval ari", "the evaluation change")


@app.command()
def dci() -> None:
    """DCI disentanglement of a checkpoint."""
    not_available("eval dci", "the evaluation change")
