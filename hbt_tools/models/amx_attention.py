"""hbt-encode's attention on Intel AMX CPUs: a C kernel, compiled on first use.

Why: with BERT-small heads (12 x 32), PyTorch's CPU flash attention is bound by its per-score
work, not by matrix multiplies: for 64 texts x 256 tokens it took 37-47 ms per layer on the
2-core AMX Xeon, as long as a third of the layer's linear layers, for a tenth of the FLOPs.
``amx_attention.c`` does the two products on AMX tiles and the softmax in AVX-512 with a short
exponential, and reads Q, K, V where the QKV projection wrote them: 15-21 ms on the same inputs
(interleaved, 2026-11-27). For head size 32 it then took blocks of 16 queries, whose scores stay
in L1: 3.6 instead of 4.7 ms for 16 texts x 256 tokens (medians of 30, interleaved).

How: compiled and loaded by :mod:`.native` (on first use, into the cache; run on PyTorch's
OpenMP threads: with threads of its own it took 24 ms instead of 16-21 per call inside the
model, competing with PyTorch's still-spinning workers). Where it cannot run (no AMX, no
compiler, ``HBT_CPU_KERNELS=0``, ...) :func:`amx_attention` returns None and the caller uses
PyTorch's attention.

Numbers: scores and sums in fp32, the numerators rounded to bf16 before the second product, the
output rounded once; tests/test_amx_attention.py holds it to PyTorch's bf16 attention's error
against fp32.
"""
from __future__ import annotations

import ctypes
import functools
from typing import TYPE_CHECKING

from .native import load_library

if TYPE_CHECKING:
    import torch

AMX_FLAGS = ("-mamx-tile", "-mamx-bf16")
AMX_FEATURES = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512bw", "avx512vl")


@functools.cache
def load_kernel():
    """The loaded kernel with AMX granted to this process, or None."""
    lib = load_library("amx_attention", AMX_FLAGS, AMX_FEATURES)
    if lib is None or lib.hbt_amx_request() != 0:  # Linux hands out AMX state on request
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
    import torch  # here, not above: load_kernel serves native_bert.py, which has no torch

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
