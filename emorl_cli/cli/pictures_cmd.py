"""`emorl gifs` and `emorl viz`."""

from emorl_cli.cli.app import not_available


def gifs() -> None:
    """Latent-traversal GIFs per slot."""
    not_available("gifs", "the evaluation change")


def viz() -> None:
    """Figures of every layer and refinement step."""
    not_available("viz", "the evaluation change")
