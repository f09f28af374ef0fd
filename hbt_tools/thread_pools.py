"""Thread-pool settings for commands that alternate numpy's BLAS and faiss' OpenMP work.

Why: hbt-search's flat shards are scored by numpy's matrix product (OpenBLAS threads) and
selected by faiss' heaps (OpenMP threads), block after block. After its turn each pool
spin-waits for more work (OpenBLAS up to 2^28 cycles by default, libgomp a while too) and takes
the CPU from the other: on the 2-core AMD EPYC, 10k queries x 100k passages took 6.0-6.3 s
that way and 4.3-4.7 s with both pools sleeping as soon as their work is done (2026-11-27,
interleaved, 2 runs each). Both libraries read these variables once, when they load, so
:func:`sleep_when_idle` must run before numpy or faiss is imported; a user's own settings win.
"""
import os

SLEEP_WHEN_IDLE = {"OPENBLAS_THREAD_TIMEOUT": "4",  # 2^4 cycles, OpenBLAS' shortest
                   "OMP_WAIT_POLICY": "PASSIVE"}


def sleep_when_idle() -> None:
    """Idle BLAS and OpenMP threads sleep at once instead of spinning (see the module)."""
    for name, value in SLEEP_WHEN_IDLE.items():
        os.environ.setdefault(name, value)
