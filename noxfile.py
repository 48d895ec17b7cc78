"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s demo`."""

import nox

nox.options.sessions = ["lint", "tests"]


def _install(session: nox.Session) -> None:
    session.install("torch==2.13.0")
    session.install("-e", ".[test]")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (CPU, a few minutes)."""
    _install(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint and check formatting with ruff (rules and line length in pyproject.toml)."""
    session.install("ruff")
    session.run("ruff", "check", "emorl_cli", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "emorl_cli", "tests", "noxfile.py")


@nox.session
def demo(session: nox.Session) -> None:
    """Run the end-to-end demo on synthetic Tetrominoes (CPU, minutes)."""
    _install(session)
    session.run("emorl", "demo", *session.posargs)
