"""`emorl bench`."""

from emorl_cli.cli.app import not_available


def bench() -> None:
    """Measure seconds per step, images per second and peak memory."""
    not_available("bench", "the speed change")
