"""hbt-encode's attention on Intel AMX CPUs: a C kernel, compiled on first use.

Why: with BERT-small heads (12 x 32), PyTorch's CPU flash attention is bound by its per-score
work, not by matrix multiplies: for 64 texts x 256 tokens it took 37-47 ms per layer on the
2-core AMX Xeon, as long as a third of the layer's linear layers, for a tenth of the FLOPs.
``amx_attention.c`` does the two products on AMX tiles and the softmax in AVX-512 with a short
exponential, and reads Q, K, V where the QKV projection wrote them: 15-21 ms on the same inputs
(interleaved, 2026-11-27).

How: the C source next to this file is compiled with the system's C compiler (``$CC`` or
``cc``) into ``<cache>/kernels/`` the first time it is needed (~0.5 s), under a name from a
hash of the source and flags, and loaded with ctypes. It runs on OpenMP threads: linked
against ``libgomp.so.1``, it resolves to the copy PyTorch loaded, so it shares PyTorch's thread
pool and thread count (its own threads competed with PyTorch's still-spinning workers: 24 ms
instead of 16-21 per call inside the model). Where anything is missing (not x86-64 Linux, no
AMX, no compiler, a failed compile: remembered in ``<name>.failed`` with the compiler's message;
delete it to try again) :func:`amx_attention` returns None and the caller uses PyTorch's
attention. ``HBT_AMX_ATTENTION=0`` turns the kernel off.

Numbers: scores and sums in fp32, the numerators rounded to bf16 before the second product, the
output rounded once; tests/test_amx_attention.py holds it to PyTorch's bf16 attention's error
against fp32.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import torch

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "amx_attention.c")
FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl",
         "-mavx512bf16", "-mamx-tile", "-mamx-bf16"]
CPU_FLAGS_NEEDED = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512bw", "avx512vl")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def kernel_path(cache_dir: str, compiler: str) -> str:
    with open(SOURCE, "rb") as fh:
        digest = hashlib.sha256(fh.read() + " ".join([compiler, *FLAGS]).encode()).hexdigest()
    return os.path.join(cache_dir, "kernels", f"amx_attention-{digest[:16]}.so")


def compile_kernel(cache_dir: str) -> str | None:
    """Path of the compiled kernel, compiling it if needed; None where that is not possible."""
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None:
        return None
    path = kernel_path(cache_dir, compiler)
    if os.path.exists(path):
        return path
    if os.path.exists(path + ".failed"):
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", tmp, SOURCE], capture_output=True,
                              text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        done = subprocess.CompletedProcess([], 1, "", str(e))
    if done.returncode != 0:
        os.unlink(tmp)
        with open(path + ".failed", "w", encoding="utf-8") as fh:  # not retried every start
            fh.write(done.stderr)
        return None
    os.replace(tmp, path)  # whole or absent, for processes compiling at the same time
    return path


@functools.cache
def load_kernel():
    """The loaded library, or None (see the module docstring)."""
    if (os.environ.get("HBT_AMX_ATTENTION", "1") == "0" or sys.platform != "linux"
            or platform.machine().lower() not in ("x86_64", "amd64")
            or not all(flag in cpu_flags() for flag in CPU_FLAGS_NEEDED)):
        return None
    from .offline import cache_root

    try:
        path = compile_kernel(cache_root())
        lib = ctypes.CDLL(path) if path else None
    except OSError:
        return None
    if lib is None or lib.hbt_amx_request() != 0:
        return None
    lib.hbt_amx_attention.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4 + [ctypes.c_float]
    return lib


def amx_attention(qkv: torch.Tensor, attention_mask: torch.Tensor,
                  heads: int) -> torch.Tensor | None:
    """Self-attention of each text's tokens over its real tokens, as
    ``scaled_dot_product_attention`` with the key-padding mask, in the layout that follows it.

    ``qkv``: the QKV projection, ``[batch, length, 3 * hidden]`` (query, key, value, each
    ``heads`` x head size). ``attention_mask``: ``[batch, length]``, 1 for real tokens, which
    must come first in each row. Returns ``[batch, length, hidden]`` (heads side by side), or
    None where the kernel does not apply: not bf16 on the CPU, gradients wanted, a head size
    that is not a multiple of 32, a mask with holes, or no kernel here.
    """
    batch, length, width = qkv.shape
    hidden = width // 3
    if (qkv.dtype != torch.bfloat16 or qkv.device.type != "cpu" or qkv.requires_grad
            or hidden % heads or (hidden // heads) % 32):
        return None
    lengths = attention_mask.sum(dim=1, dtype=torch.int32)
    positions = torch.arange(length, device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), positions < lengths[:, None]) or (lengths < 1).any():
        return None
    lib = load_kernel()
    if lib is None:
        return None
    qkv = qkv.contiguous()
    out = torch.empty(batch, length, hidden, dtype=torch.bfloat16)
    head_size = hidden // heads
    status = lib.hbt_amx_attention(qkv.data_ptr(), lengths.data_ptr(), out.data_ptr(), batch,
                                   length, heads, head_size, head_size ** -0.5)
    return out if status == 0 else None
