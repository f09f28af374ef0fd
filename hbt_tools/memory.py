"""Process-wide memory settings for the commands that run a model.

:func:`keep_freed_memory` keeps freed memory inside the process, so that big tensors stop
page-faulting; :func:`bound_kernel_caches` stops oneDNN from keeping a compiled kernel for every
matrix shape it has seen.

The first: glibc serves every allocation above its mmap threshold (32 MB at most) with a fresh
``mmap`` and returns it with ``munmap`` on free. An encoder's activations are of that size (16k
tokens x 1,536 bf16 = 50 MB per FFN output), so every op of every forward pass maps new pages and
the kernel zero-fills them on first touch: hbt-encode took 2.2 million minor page faults for 400
XQuAD-R passages, about 9% of its time, and training re-faults its 384 MB word-embedding gradient
each step. Raising the mmap and trim thresholds lets freed blocks be reused from the heap instead.
Peak memory is unchanged (the same blocks are live at the peak); the numbers computed are the same
bit for bit.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_LARGEST_HEAP_BLOCK = 1 << 30  # blocks above 1 GiB still come from mmap
KERNEL_CACHE_CAPACITY = 64


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep and reuse freed blocks up to 1 GiB; False where the C
    library is not glibc (macOS, musl), which is left as it is."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST_HEAP_BLOCK)
                and mallopt(_M_TRIM_THRESHOLD, 2 * _LARGEST_HEAP_BLOCK - 1))


def bound_kernel_caches(capacity: int = KERNEL_CACHE_CAPACITY) -> None:
    """Keep at most ``capacity`` compiled kernels in oneDNN's primitive cache and in ideep's
    cache of kernel descriptions (PyTorch's CPU matmuls), instead of 1,024 each.

    Each distinct matrix shape gets its own JIT-compiled kernel and buffers (~0.5-1 MB). The
    packed training forward multiplies a different number of tokens in nearly every chunk, so
    the caches filled with kernels that never ran again: ~800 MB of a ``--chunk-size 32`` run's
    3.6 GB peak (memray), 550 MB less with 64 and the same step time. Both libraries read these
    variables when they build their first kernel, so this must run before the first matmul; a
    value the user set is kept. (A capacity of 0 crashed PyTorch 2.13 here.)
    """
    if capacity < 1:
        raise ValueError("the kernel cache capacity must be at least 1")
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(name, str(capacity))
