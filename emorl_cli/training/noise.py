"""Sampling noise that does not depend on how the global batch is split across processes.

Each process draws the standard-normal noise of the *whole* global batch from a generator seeded by
(seed, step) and keeps its own rows. An image therefore gets the same noise whether it is trained on one
process or on N, and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import torch


class GlobalBatchNoise:
    """Callable `noise(shape) -> Tensor` of standard normals for this process's share of the batch.

    `shape[0]` is the local batch dimension (images, or images·K when slots are flattened: the rows of
    one image stay together because shares are contiguous).
    """

    def __init__(self, seed: int, step: int, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.generator = torch.Generator(device="cpu").manual_seed(_mix(seed, step))

    def __call__(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        local = shape[0]
        full = torch.randn((local * self.world_size, *shape[1:]), generator=self.generator)
        share = full[self.rank * local : (self.rank + 1) * local]
        if self.device.type != "cuda":
            return share.to(self.device)
        # from pinned memory the copy is queued behind the step's work instead of waiting for it
        return share.pin_memory().to(self.device, non_blocking=True)


def _mix(seed: int, step: int) -> int:
    """A 63-bit seed from (seed, step) that differs for neighbouring values of both."""
    return (seed * 1_000_003 + step * 7_919 + 0x5DEECE66D) % (2**63 - 1)
