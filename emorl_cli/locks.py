"""One emorl process per folder: an operating-system lock on FOLDER/.emorl-lock, which names its holder.

`emorl train` holds its run folder, `emorl data fetch` / `data synth` / `data import` their data folder and
`emorl models fetch` its destination for as long as they run, so two commands can never write the same
checkpoints, metrics, downloads or manifest. The lock is `flock` on the lock file: the operating system
drops it when its process ends in any way (even `kill -9`), so a lock can never outlive its holder. The
file holds the holder's PID, machine, command and start time, for the message a second process prints. A
clean exit removes the file; a file left by a killed process is taken over by the next one, which says so.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from emorl_cli.errors import BusyError, OutputError
from emorl_cli.files import make_folder, open_fd_for_writing, pid_alive, write_error
from emorl_cli.json_input import JsonProblem, loads_strict

LOCK_NAME = ".emorl-lock"
log = logging.getLogger("emorl.locks")

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock without waiting; False when another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK):
            return False
        raise
    return True


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace").strip()
        holder = loads_strict(text) if text else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, JsonProblem):
        return {}


def describe_holder(holder: dict[str, Any]) -> str:
    """'PID 1234 on host, `emorl train`, since 2024-05-01 12:00:00' from a lock file's record."""
    pid = holder.get("pid")
    parts = [f"PID {pid}" if pid else "PID unknown"]
    if holder.get("host") and holder.get("host") != socket.gethostname():
        parts[0] += f" on {holder['host']}"
    if holder.get("command"):
        parts.append(f"`{holder['command']}`")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return ", ".join(parts)


class FolderLock:
    """The held lock of one folder; `release()` (or leaving the `with` block) gives it up."""

    def __init__(self, folder: Path, fd: int, previous: dict[str, Any]):
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._fd: Optional[int] = fd
        self.previous = previous  # the record a killed holder left behind ({} when none)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in this order, so no other process can lock a file
        that is about to disappear)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)  # closing the descriptor drops the lock
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:  # a lock object dropped without release() still lets go
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)  # type: ignore[arg-type]
            except OSError:
                pass


def lock_folder(folder: str | Path, command: str, *, advice: str) -> FolderLock:
    """Lock `folder` (created if needed) for this process, or raise a one-line error.

    Args:
        folder: the folder to hold.
        command: what holds it, shown to a second process (e.g. 'emorl train').
        advice: what a second process should do, e.g. 'wait for it to finish or choose another --out'.

    Raises:
        BusyError: another running process holds the folder (the message names its PID).
        OutputError: the folder or its lock file cannot be created (a file in the way, read-only, full).
    """
    folder = make_folder(folder)
    path = folder / LOCK_NAME
    for _ in range(100):
        fd = open_fd_for_writing(path, "r+")  # never through a link planted in the folder
        try:
            locked = _try_lock(fd)
        except OSError as exc:
            os.close(fd)
            raise OutputError(f"cannot lock {path} ({exc.strerror or exc}); use a folder on a local disk") from None
        if not locked:
            holder = _read_holder(fd)
            os.close(fd)
            raise BusyError(f"{folder} is in use by another emorl process ({describe_holder(holder)}); {advice}")
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:  # the previous holder removed the file while we waited for it: lock the new one
            os.close(fd)
            continue
        previous = _read_holder(fd)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(record) + "\n").encode())
        except OSError as exc:
            os.close(fd)
            raise write_error(path, exc) from None
        lock = FolderLock(folder, fd, previous)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            alive = previous.get("host") == socket.gethostname() and pid_alive(int(previous["pid"]))
            log.warning(
                "took over the lock of %s from %s, %s",
                folder,
                describe_holder(previous),
                "which let go of it without removing it" if alive else "which is no longer running",
            )
        return lock
    raise BusyError(f"{folder} keeps changing hands between other emorl processes; {advice}")


def folder_holder(folder: str | Path) -> Optional[dict[str, Any]]:
    """The record of the process that holds `folder` now ({} when its file names none), or None when no
    process holds it. Takes nothing: the lock file is opened read-only and only tested (a shared lock, let go
    at once), so a holder is never disturbed and a free folder stays free."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None  # no lock file: nobody holds the folder
    try:
        if fcntl is None:  # pragma: no cover - Windows
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _read_holder(fd)
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
