"""`emorl tune-geco` and `emorl demo`."""

from emorl_cli.cli.app import not_available


def tune_geco() -> None:
    """Propose a GECO reconstruction target from a short pilot run."""
    not_available("tune-geco", "the demo change")


def demo() -> None:
    """Train and show a small model on synthetic Tetrominoes, on a CPU, in minutes."""
    not_available("demo", "the demo change")
