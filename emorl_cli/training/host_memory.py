"""Keep freed host memory for reuse: a CPU training step frees and reallocates the same large tensors.

glibc's malloc serves every block above 32 MB with a fresh `mmap` and returns it to the system on `free`.
A training step at 64×64 allocates and frees GBs of decoder activations, so each step page-faults them
all in again: the kernel zeroes every page before the convolution can write it (about a third of a
Multi-dSprites step's CPU time was system time). `keep_freed_memory` asks glibc to take large blocks from
the heap instead and not to trim it, so freed memory stays mapped and later steps reuse it without faults —
the caching that CUDA's allocator does on a GPU (the system time of `emorl bench multi_dsprites --mode train
--batch-size 8 --steps 2` fell from 21.2 s to 0.6 s). The process's resident memory then stays at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, glibc's malloc.h
_done = False


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (once per process). False where there is no
    glibc (macOS, musl): nothing changes there."""
    global _done
    if _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # no mmap for large blocks, and never give the heap's top back to the system
    _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _done
