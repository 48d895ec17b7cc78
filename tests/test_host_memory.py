"""keep_freed_memory: a large block freed and allocated again is reused without page faults."""

import platform
import subprocess
import sys

import pytest

from tests.helpers import subprocess_env

SCRIPT = """
import resource, sys, torch
from emorl_cli.training.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # once per process, then a no-op
torch.set_num_threads(1)
torch.ones(2**25)  # 128 MB: allocate, fill, free
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(2**25)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=subprocess_env(), check=True
    )
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_freed_large_block_is_reused_without_page_faults():
    pages = 2**27 // 4096
    assert _faults("default") > pages // 2  # glibc's default: every page of the new block faulted in again
    assert _faults("keep") < pages // 10
