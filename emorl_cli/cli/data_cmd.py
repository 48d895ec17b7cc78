"""`emorl data …` commands."""

import typer

from emorl_cli.cli.app import not_available

app = typer.Typer(no_args_is_help=True)


@app.command()
def fetch() -> None:
    """Download the EfficientMORL datasets from Zenodo, resumable and verified."""
    not_available("data fetch", "the data change")


@app.command()
def synth() -> None:
    """Generate a synthetic dataset in the Zenodo layout."""
    not_available("data synth", "the data change")


@app.command()
def info() -> None:
    """Describe an .h5 dataset file."""
    not_available("data info", "the data change")


@app.command()
def verify() -> None:
    """Re-check downloaded files against their manifest."""
    not_available("data verify", "the data change")
