"""keep_freed_memory: big blocks are reused from the heap instead of being mapped afresh;
bound_kernel_caches: oneDNN stops keeping a compiled kernel per matrix shape."""
import os
import subprocess
import sys

import pytest

from hbt_tools.memory import bound_kernel_caches

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


# Runs a bf16 linear layer forward and backward on 300 token counts, as packed training does;
# prints how many MB the process grew.
GROWTH_OVER_NEW_SHAPES = """
import sys, torch
from hbt_tools.memory import bound_kernel_caches
if sys.argv[1] == "bound":
    bound_kernel_caches()
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
weight = torch.randn(384, 384, requires_grad=True)
with torch.autocast("cpu", dtype=torch.bfloat16):
    torch.nn.functional.linear(torch.randn(8, 384), weight).float().sum().backward()
before = resident_mb()
for tokens in range(9, 309):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.nn.functional.linear(torch.randn(tokens, 384), weight)
    out.float().sum().backward()
print(resident_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_kernel_caches_stop_growing_with_new_shapes():
    env = {k: v for k, v in os.environ.items()
           if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}

    def growth_mb(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", GROWTH_OVER_NEW_SHAPES, mode], check=True,
                              capture_output=True, text=True, env=env)
        return int(done.stdout)

    default = growth_mb("default")
    assert default > 150  # a kernel per shape: ~1 MB each, 900 shapes
    # 64 kernels stay: 23 MB on an AVX-512 CPU (AMD) against 526 MB unbounded, 70 MB on an
    # AMX CPU (Intel, bigger kernels) against 450 MB
    assert growth_mb("bound") < default / 3


def test_kernel_cache_bound_keeps_the_users_setting(monkeypatch):
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    bound_kernel_caches(64)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"
    assert os.environ["LRU_CACHE_CAPACITY"] == "64"
    with pytest.raises(ValueError):
        bound_kernel_caches(0)
