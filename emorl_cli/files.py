"""Writing files so that nothing half-written is ever left under a final name, and saying in one line why
the operating system refused a write (a full disk, a read-only folder, a file where a folder belongs).

Every atomic write goes to a hidden temporary file beside its target, named
`.NAME.PID@HOST.XXXXXXXX.tmp` after the process writing it; the file is flushed to the disk (fsync) before
it is renamed onto NAME, and the folder after, so that neither a crash nor a power loss can leave a short or
empty file under the final name. Temporary files of writers that are no longer running (killed mid-write)
are removed the next time emorl writes into that folder.

No write follows a link planted in a folder emorl was given: atomic writes rename onto the name (replacing a
link, never writing through it), and the files emorl appends to or rewrites in place (logs, `metrics.jsonl`,
lock files, partial downloads) are opened with `open_for_writing`, which refuses a symbolic link, a hard link
and anything that is not a plain file. Folders emorl makes inside a given folder (`inner_folder`) refuse a
symbolic link in their place.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Optional

from emorl_cli.errors import OutputError

log = logging.getLogger("emorl.files")

# errno values that mean "this place cannot be written", as opposed to a bug
WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
    errno.ENAMETOOLONG,
    errno.EIO,
}
_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or choose another folder, then run the command again",
    errno.EDQUOT: "your disk quota is used up; free some space or choose another folder",
    errno.EFBIG: "the file is larger than this file system allows; choose another folder",
    errno.EROFS: "the file system is read-only; choose a folder on a writable disk",
    errno.EACCES: "no permission to write there; choose a folder you can write to or fix its permissions",
    errno.EPERM: "no permission to write there; choose a folder you can write to or fix its permissions",
    errno.ENOTDIR: "a file stands where a folder belongs; choose another path",
    errno.EEXIST: "a file stands where a folder belongs; choose another path",
    errno.EISDIR: "a folder stands where the file belongs; choose another path",
    errno.ENAMETOOLONG: "the name is too long for this file system; choose a shorter path",
    errno.EIO: "the disk reported an input/output error; check the disk",
}

_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "localhost"
# .NAME.PID@HOST.XXXXXXXX.tmp (this module's temporary files)
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]+)\.[0-9a-f]{8}\.tmp$")
# .NAME.XXXXXXXX.tmp (tempfile.mkstemp's names, used by earlier emorl versions, which named no writer)
_OLD_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
_swept: set[str] = set()


# ------------------------------------------------------------------------------------------------ errors


def is_write_error(exc: BaseException) -> bool:
    """True for an OSError that says a place cannot be written (full, read-only, no permission, …)."""
    return isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS


def write_error(path: str | Path, exc: OSError, action: str = "write") -> OutputError:
    """One line: which path, the operating system's reason, what to do."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    advice = _ADVICE.get(exc.errno or -1, "check the folder and run the command again")
    return OutputError(f"cannot {action} {path} ({reason}); {advice}")


def make_folder(folder: str | Path, what: str = "folder") -> Path:
    """mkdir -p, with a one-line `OutputError` when it cannot be made (a file in the way, read-only, …)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, not a folder; choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc, "create the folder") from None
    return folder


def ensure_writable_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Create `folder` if needed and prove it can be written (a small file is written, synced and removed),
    so that a command fails in its first second rather than after minutes of work."""
    folder = make_folder(folder, what)
    probe = folder / f".emorl-write-test.{os.getpid()}@{_HOST}.{secrets.token_hex(4)}.tmp"
    try:
        with open(probe, "xb") as handle:  # a new file: never through a link
            handle.write(b"emorl")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise write_error(folder, exc, f"write in the {what}") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    return folder


def ensure_writable_file(path: str | Path, what: str = "output file") -> Path:
    """Check that `path` can be written: not a folder, and its folder writable (see `ensure_writable_folder`)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name such as {path / 'out'}")
    ensure_writable_folder(path.parent, f"folder of the {what}")
    return path


# ------------------------------------------------------------------------------------------------ links

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_MODES = {
    "a": os.O_WRONLY | os.O_APPEND,
    "w": os.O_WRONLY,  # truncated only after the checks below, never a file another name shares
    "r+": os.O_RDWR,
}


def _link_error(path: Path, what: str) -> OutputError:
    try:
        target = f" to {os.readlink(path)}"
    except OSError:
        target = ""
    return OutputError(
        f"{path} is {what}{target}; emorl never writes through a link planted in its folders — remove it "
        "(or choose another folder) and run the command again"
    )


def open_fd_for_writing(path: str | Path, mode: str = "a") -> int:
    """`open_for_writing` at the level of a file descriptor (for `flock`); the caller closes it."""
    path = Path(path)
    base = mode.rstrip("b")
    flags = _MODES[base] | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (not _NOFOLLOW and path.is_symlink()):
            raise _link_error(path, "a symbolic link") from None
        if exc.errno == errno.ENXIO:  # a FIFO without a reader
            raise _link_error(path, "not a plain file (a FIFO or socket)") from None
        if is_write_error(exc):
            raise write_error(path, exc) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _link_error(path, "not a plain file (a FIFO, device or socket)")
        if info.st_nlink > 1:
            raise _link_error(path, f"a hard link (one of {info.st_nlink} names of one file)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        if base == "w":
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_for_writing(path: str | Path, mode: str = "a", *, encoding: Optional[str] = "utf-8") -> IO[Any]:
    """Open `path` to append (`"a"`), overwrite (`"w"`) or read and write (`"r+"`), creating it when missing,
    without ever following a link: a symbolic link (even a dangling one), a second hard link to another file,
    a FIFO or a device in its place is a one-line `OutputError`, and nothing outside the folder is touched.

    Args:
        path: the file, inside a folder emorl writes to.
        mode: "a", "w" or "r+"; a `b` suffix ("ab") or `encoding=None` opens it in binary.
        encoding: the text encoding (None: binary).

    Raises:
        OutputError: a link or a non-file stands at `path`, or the operating system refused the write.
    """
    fd = open_fd_for_writing(path, mode)
    base = mode.rstrip("b")
    if mode.endswith("b") or encoding is None:
        return os.fdopen(fd, base + "b")
    return os.fdopen(fd, base, encoding=encoding)


def inner_folder(root: str | Path, *parts: str) -> Path:
    """`root/parts…`, made where missing, refusing a symbolic link in place of any of `parts` (the folders
    emorl makes inside a folder it was given: a run's `checkpoints/`, a sweep's `seed=1/`, a dataset's
    subfolders). `root` itself may be a link; the user chose it."""
    return make_folder(refuse_links(root, *parts))


def refuse_links(root: str | Path, *parts: str) -> Path:
    """`root/parts…`, after checking that none of `parts` that exists is a symbolic link (nothing is made)."""
    folder = Path(root)
    for part in parts:
        for piece in Path(part).parts:
            folder = folder / piece
            if folder.is_symlink():
                raise _link_error(folder, "a symbolic link")
    return folder


# ------------------------------------------------------------------------------------------------ temp files


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (True when it cannot be told)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to someone else
    return True


def _stale(name: str, owned_folder: bool) -> bool:
    match = _TEMP.match(name)
    if match:
        if match.group("host") == _HOST:
            return not pid_alive(int(match.group("pid")))
        return owned_folder  # another machine's writer: only a folder we hold the lock of is ours to clean
    return owned_folder and bool(_OLD_TEMP.match(name))


def remove_stale_temp_files(folder: str | Path, *, owned_folder: bool = False) -> int:
    """Remove the temporary files interrupted writers left in `folder`; returns the bytes freed.

    A temporary file is stale when the process that wrote it no longer runs on this machine. With
    `owned_folder` (the caller holds the folder's lock, so no other emorl writes there) temporary files that
    name no writer, or a writer on another machine, are stale too.
    """
    folder = Path(folder)
    freed, count = 0, 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.endswith(".tmp") or not entry.is_file(follow_symlinks=False):
            continue
        if not _stale(entry.name, owned_folder):
            continue
        try:
            size = entry.stat(follow_symlinks=False).st_size
            os.unlink(entry.path)
        except OSError:
            continue
        freed += size
        count += 1
    if count:
        log.warning(
            "removed %d temporary %s (%s bytes) left in %s by an interrupted write",
            count,
            "file" if count == 1 else "files",
            f"{freed:,}",
            folder,
        )
    return freed


def _sweep_once(folder: Path) -> None:
    key = str(folder.resolve())
    if key not in _swept:
        _swept.add(key)
        remove_stale_temp_files(folder)


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return  # some systems cannot open a folder; the rename is still atomic
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if not directory or exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is synced to disk and renamed onto `path` (then
    the folder is synced), on error removed. A full disk, a read-only folder and the like raise a one-line
    `OutputError` naming `path`."""
    path = Path(path)
    folder = make_folder(path.parent)
    _sweep_once(folder)
    tmp = folder / f".{path.name}.{os.getpid()}@{_HOST}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(folder, directory=True)
    except OSError as exc:
        if is_write_error(exc):
            raise write_error(path, exc) from None
        raise
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text atomically (temp file + fsync + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any, indent: Optional[int] = 2) -> None:
    """Write strict JSON atomically, indented, with a trailing newline; NaN and ±inf are written as null."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=indent, sort_keys=False, allow_nan=False) + "\n")
