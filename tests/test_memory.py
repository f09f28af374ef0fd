"""keep_freed_memory: big blocks are reused from the heap instead of being mapped afresh."""
import subprocess
import sys

import pytest

# Allocates and frees a 64 MB block 20 times; prints the minor page faults of the last 19.
FAULTS_OF_REALLOCATION = """
import resource, sys
from hbt_tools.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def touch():
    block = bytearray(64 << 20)  # zero-filled: every page is written
    block[::4096] = b"x" * len(block[::4096])
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(19):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_REALLOCATION, mode], check=True,
                          capture_output=True, text=True)
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_blocks_are_reused_without_page_faults():
    pages = 19 * (64 << 20) // 4096
    assert faults("default") > pages // 2  # glibc maps each 64 MB block afresh
    assert faults("keep") < pages // 100   # the freed block is reused
