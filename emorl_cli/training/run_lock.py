"""The lock of a training run folder, held by the first process of a run for as long as it trains.

Under `torchrun` / `accelerate launch` the processes of one run share the folder: only the main process
locks it, and every process learns whether that worked, so that all stop together when another run holds
the folder (rather than the others waiting for a main process that has left).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from emorl_cli.errors import BusyError, EmorlError
from emorl_cli.files import remove_stale_temp_files
from emorl_cli.locks import FolderLock, lock_folder

ADVICE = "wait for it to finish, or train into another folder with --out"


def lock_run_folder(root: Path, accelerator: Any, subfolders: tuple[Path, ...] = ()) -> Optional[FolderLock]:
    """Lock `root` in the main process (None elsewhere); then remove temporary files that interrupted
    writes left in it and in `subfolders` (the lock guarantees no other writer owns them).

    Raises:
        BusyError: another emorl process holds the folder (in every process of the run).
        OutputError: the folder cannot be created or written (in the main process).
    """
    lock: Optional[FolderLock] = None
    failure: Optional[EmorlError] = None
    if accelerator.is_main_process:
        try:
            lock = lock_folder(root, "emorl train", advice=ADVICE)
        except EmorlError as exc:
            failure = exc
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        shared = broadcast_object_list([str(failure) if failure is not None else None], from_process=0)
        if failure is None and shared[0] is not None:
            raise BusyError(shared[0])
    if failure is not None:
        raise failure
    if lock is not None:
        for folder in (root, *subfolders):
            remove_stale_temp_files(folder, owned_folder=True)
    return lock
