"""The `emorl` command tree (every command module attached to one root `app`) and its single error boundary."""

from __future__ import annotations

import signal
from typing import Annotated, NoReturn, Optional

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from emorl_cli import __version__
from emorl_cli.cli import (
    bench_cmd,
    config_cmd,
    data_cmd,
    demo_cmd,
    eval_cmd,
    experiments_cmd,
    models_cmd,
    pictures_cmd,
    segment_cmd,
    stopping,
    train_cmd,
)
from emorl_cli.cli.console import debug_enabled, err_console, show_library_notes
from emorl_cli.cli.options import THREADS_KEY, threads_check
from emorl_cli.errors import EmorlError
from emorl_cli.files import is_write_error, write_error

DEBUG_KEY = "emorl.debug"


class EmorlGroup(TyperGroup):
    """Turns every `EmorlError` raised below into one red line and exit code 1 — and so an OSError that
    says a place cannot be written (a full disk, a read-only folder) which no library call caught first.
    A command stopped by a signal (`stopping.py`) ends with one line saying what was kept and how to go on,
    and the signal's exit code (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, stopping.Stopped) else signal.SIGINT
            self._stop(ctx, exc, stopping.stop_message(signum), signum)
        except (EmorlError, OSError) as exc:
            signum = stopping.received()
            if signum is not None:  # the library turned the stop into its own account (a sweep's runs)
                self._stop(ctx, exc, f"stopped by {signal.Signals(signum).name}; {exc}", signum)
            self._fail(ctx, exc)

    @staticmethod
    def _stop(ctx: click.Context, exc: BaseException, line: str, signum: int) -> NoReturn:
        if debug_enabled() or ctx.meta.get(DEBUG_KEY):
            raise exc
        try:
            err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
        except OSError:  # the terminal is gone (SIGHUP): the exit code still says why
            pass
        raise typer.Exit(128 + int(signum)) from None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """The group's own options (`--threads 0`) are checked while parsing, before `invoke`."""
        try:
            return super().parse_args(ctx, args)
        except EmorlError as exc:
            self._fail(ctx, exc)

    @staticmethod
    def _fail(ctx: click.Context, exc: Exception) -> NoReturn:
        if debug_enabled() or ctx.meta.get(DEBUG_KEY):
            raise exc
        if isinstance(exc, OSError):
            if not is_write_error(exc):
                raise exc
            exc = write_error(exc.filename or "a file", exc)
        # a path of bytes that are not UTF-8 is shown with escapes (\xff) rather than failing to print
        text = str(exc).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


app = typer.Typer(
    cls=EmorlGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="EfficientMORL: train, evaluate and inspect object-centric models (Emami et al., ICML 2021).\n\n"
    "Example: emorl demo  (the whole workflow on synthetic data, on a CPU, in about 10 minutes)",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"emorl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (same as EMORL_DEBUG=1).")] = False,
    threads: Annotated[
        Optional[int],
        typer.Option(
            "--threads",
            callback=threads_check(),
            help="CPU threads for torch (default: one per core). On a machine shared with other jobs, 1 can be "
            "several times faster.",
        ),
    ] = None,
) -> None:
    ctx.meta[DEBUG_KEY] = debug
    stopping.begin()
    ctx.meta[THREADS_KEY] = threads  # the sweep passes it on to every run it starts
    show_library_notes()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


app.add_typer(
    data_cmd.app,
    name="data",
    help="Download, synthesise, inspect and verify datasets.\n\nExample: emorl data synth tetrominoes --out data/synth",
)
app.command("train", cls=train_cmd.OptionalValueCommand)(train_cmd.train)
app.add_typer(
    eval_cmd.app,
    name="eval",
    help="Evaluate a checkpoint: ARI, DCI, activeness.\n\n"
    "Example: emorl eval ari --checkpoint runs/tetro/checkpoints/step_0200000.pt --data-dir data/synth",
)
app.command("gifs")(pictures_cmd.gifs)
app.command("viz")(pictures_cmd.viz)
app.command("segment")(segment_cmd.segment)
app.command("tune-geco")(demo_cmd.tune_geco)
app.command("demo")(demo_cmd.demo)
app.command("sweep")(experiments_cmd.sweep)
app.command("report")(experiments_cmd.report)
app.command("bench")(bench_cmd.bench)
app.add_typer(
    config_cmd.app, name="config", help="Show, validate and convert configs.\n\nExample: emorl config show tetrominoes"
)
app.add_typer(
    models_cmd.app,
    name="models",
    help="List and download the published EfficientMORL checkpoints.\n\n"
    "Example: emorl models fetch tetrominoes --dest models",
)


def main() -> None:
    """Console-script entry point: stop signals unwind the command as Ctrl-C does (`stopping.py`)."""
    stopping.install()
    app()
