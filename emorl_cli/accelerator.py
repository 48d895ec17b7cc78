"""The one place an Accelerate `Accelerator` is made, for training and for evaluation alike.

`make_accelerator` always gives one (training: the process group, the device, mixed precision);
`launched_accelerator` gives one only under a multi-process launch (`accelerate launch`, `torchrun`), so a
single-process evaluation never starts a process group.
"""

from __future__ import annotations

import os
from typing import Any, Optional


def make_accelerator(mixed_precision: str = "no", cpu: bool = False) -> Any:
    """An Accelerator; the shared state is reset so several runs can share one Python process."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def launched_accelerator() -> Optional[Any]:
    """An Accelerator under a multi-process launch (WORLD_SIZE > 1), else None: evaluation then shards its
    images over the processes and gathers the results without duplicates."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return make_accelerator("no")
