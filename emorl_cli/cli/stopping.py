"""Stopping a command by a signal: SIGINT (Ctrl-C), SIGTERM (`kill`, `timeout`, a scheduler) and SIGHUP (a
closed terminal) all unwind the command the same way — as Ctrl-C does, so that locks are released,
temporary files removed and a sweep's trainings stopped — and end with one line saying what was kept and
how to continue, and the exit code of the signal (128 + its number: 130, 143, 129).

A command says what its line is with `on_stop(explain)` before its work; `explain()` is called only when
a signal arrives, so it can name what exists by then (the newest checkpoint, the files written).
"""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """A stop signal arrived; raised where the program was, and handled like Ctrl-C from there on."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: Optional[int] = None
_explain: Optional[Callable[[], str]] = None


def _raise(signum: int, frame: object) -> None:
    global _received
    if _received is not None:
        return  # a second signal while unwinding the first does not interrupt the cleanup
    _received = signum
    raise Stopped(signum)


def begin() -> None:
    """Forget the signal and the explanation of an earlier command run in this process."""
    global _received, _explain
    _received, _explain = None, None


def install() -> None:
    """Turn SIGINT, SIGTERM and SIGHUP into `Stopped` in this process (the main thread only)."""
    begin()
    for signum in STOP_SIGNALS:
        try:
            signal.signal(signum, _raise)
        except (ValueError, OSError):  # not the main thread, or a signal this platform does not allow
            pass


def received() -> Optional[int]:
    """The stop signal that arrived, or None."""
    return _received


def on_stop(explain: Callable[[], str]) -> None:
    """What the command keeps and how to continue, said in the one line printed when it is stopped."""
    global _explain
    _explain = explain


def rerun_command(*extra: str) -> str:
    """This command line again (`emorl …` as typed, quoted for a shell), with `extra` arguments added."""
    args = list(sys.argv[1:])
    args += [arg for arg in extra if arg not in args]
    return shlex.join(["emorl", *args])


def kept_checkpoint(run_dir: Path) -> str:
    """What a stopped training kept: 'RUN keeps checkpoints up to step N (PATH)', or that none was saved."""
    from emorl_cli.training.rundir import RunDir

    newest = RunDir(run_dir).latest_checkpoint()
    if newest is None:
        return f"no checkpoint was saved in {run_dir} yet"
    return f"{run_dir} keeps its checkpoints up to {newest.name} ({newest})"


def stop_message(signum: int) -> str:
    """'stopped by SIGTERM; <what was kept and how to continue>'."""
    name = signal.Signals(signum).name
    try:
        explained = _explain() if _explain is not None else ""
    except Exception:  # the message must never fail the exit
        explained = ""
    default = f"every file it wrote is whole (written beside its name, then renamed); run `{rerun_command()}` again"
    return f"stopped by {name}; {explained or default}"
