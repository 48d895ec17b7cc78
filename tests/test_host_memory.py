"""keep_freed_memory: large blocks come from the heap and stay mapped after free, for the next step."""

import platform
import subprocess
import sys

import pytest
from helpers import subprocess_env

SCRIPT = """
import sys, torch
from emorl_cli.training.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # once per process, then a no-op
torch.set_num_threads(1)

def heap():
    line = next(line for line in open("/proc/self/maps") if "[heap]" in line)
    return [int(bound, 16) for bound in line.split()[0].split("-")]

block = torch.ones(2**25)  # 128 MB
start, end = heap()
in_heap = start <= block.data_ptr() < end
del block  # freed: is the heap given back to the system?
print(int(in_heap), int(heap()[1] >= end))
"""


def _block(mode: str) -> tuple[bool, bool]:
    """(a 128 MB tensor lies in the heap, the heap keeps its size after the tensor is freed)."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=subprocess_env(), check=True
    )
    in_heap, kept = done.stdout.split()[-2:]
    return in_heap == "1", kept == "1"


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_large_blocks_come_from_the_heap_and_stay_there_after_free():
    assert _block("default")[0] is False  # glibc's default: a block this large is its own mmap, unmapped on free
    assert _block("keep") == (True, True)  # from the heap, and the heap is not trimmed when it is freed
