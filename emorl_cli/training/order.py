"""Which samples each process reads at each step: seeded, resumable, disjoint across processes.

Every process computes the same global batch for a step — a slice of a per-epoch permutation of the whole
split — and takes its contiguous share. The global batch is therefore the same for any number of
processes, which is what makes an N-process run equal to a 1-process run, and resuming at step s needs no
state but s itself.
"""

from __future__ import annotations

import numpy as np

from emorl_cli.errors import TrainingError


class GlobalBatchOrder:
    """Global batches of a fixed size drawn epoch by epoch from seeded permutations (last partial batch dropped)."""

    def __init__(self, num_samples: int, global_batch: int, seed: int):
        if num_samples < global_batch:
            raise TrainingError(
                f"the training split has {num_samples} images, fewer than training.batch_size={global_batch}; "
                f"use a smaller batch or more data"
            )
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.seed = seed
        self.steps_per_epoch = num_samples // global_batch
        self._epoch = -1
        self._perm: np.ndarray | None = None

    def global_indices(self, step: int) -> np.ndarray:
        """Sample indices of the global batch used at `step`. # [global_batch]"""
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            self._epoch = epoch
        start = position * self.global_batch
        return self._perm[start : start + self.global_batch]

    def local_indices(self, step: int, rank: int, world_size: int) -> np.ndarray:
        """This process's contiguous share of the global batch at `step`. # [global_batch / world_size]"""
        per_process = local_batch_size(self.global_batch, world_size)
        return self.global_indices(step)[rank * per_process : (rank + 1) * per_process]


def local_batch_size(global_batch: int, world_size: int) -> int:
    """Images per process; the global batch must split evenly."""
    if global_batch % world_size:
        raise TrainingError(
            f"training.batch_size={global_batch} does not split evenly over {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    return global_batch // world_size


class StepBatchSampler:
    """A DataLoader `batch_sampler`: this process's index list for each step in [start, stop), lazily."""

    def __init__(self, order: GlobalBatchOrder, start: int, stop: int, rank: int, world_size: int):
        self.order, self.start, self.stop = order, start, stop
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.order.local_indices(step, self.rank, self.world_size).tolist()
