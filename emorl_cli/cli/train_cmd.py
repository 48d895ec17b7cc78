"""`emorl train`."""

from emorl_cli.cli.app import not_available


def train() -> None:
    """Train EfficientMORL or Slot Attention."""
    not_available("train", "the training change")
