"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

DATA = Path(__file__).parent / "data"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli(runner):
    """Invoke `emorl ARGS…` in-process; returns the click Result."""
    from emorl_cli.cli.app import app

    def invoke(*args: str, **kwargs):
        return runner.invoke(app, [str(a) for a in args], **kwargs)

    return invoke


@pytest.fixture
def fake():
    """A fake Zenodo/file server on 127.0.0.1 (fake_server.FakeZenodo), shut down after the test."""
    from fake_server import FakeZenodo

    server = FakeZenodo()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked `cuda` where torch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
