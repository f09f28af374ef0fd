"""hbt-encode's bf16 attention on AVX-512 CPUs: C kernels, compiled on first use.

Why: with BERT-small heads (12 x 32), PyTorch's CPU flash attention is bound by its per-score
work, not by matrix multiplies: for 64 texts x 256 tokens it took 37-47 ms per layer on the
2-core AMX Xeon, as long as a third of the layer's linear layers, for a tenth of the FLOPs; on
the 2-core AMD EPYC (Zen 4, AVX512-BF16, no AMX) it was 4.2 of a 13 s encode of 300 XQuAD-R
passages (69 GFLOP/s; the linear layers ran at 340). Two kernels read Q, K and V where the QKV
projection wrote them and write the context in the layout the output projection reads, with the
softmax in AVX-512 and a short exponential:

* ``amx_attention.c`` (Intel AMX) does the two products on AMX tiles: 15-21 ms on the inputs
  above (interleaved, 2026-11-27); for head size 32 it takes blocks of 16 queries, whose scores
  stay in L1: 3.6 instead of 4.7 ms for 16 texts x 256 tokens (medians of 30);
* ``avx512_attention.c`` (AVX512-BF16 without AMX) does them with ``vdpbf16ps`` on vector
  registers, 8 queries x 32 keys (or dimensions) per step.

How: compiled and loaded by :mod:`.native` (on first use, into the cache; run on PyTorch's
OpenMP threads: with threads of its own the AMX kernel took 24 ms instead of 16-21 per call
inside the model, competing with PyTorch's still-spinning workers). Where neither can run (no
AVX512-BF16, no compiler, ``HBT_CPU_KERNELS=0``, ...) :func:`cpu_attention` returns None and
the caller uses PyTorch's attention.

Numbers: scores and sums in fp32, the numerators rounded to bf16 before the second product, the
output rounded once; tests/test_cpu_attention.py holds both kernels to PyTorch's bf16
attention's error against fp32.
"""
from __future__ import annotations

import ctypes
import functools
from typing import TYPE_CHECKING

from .native import AVX512_BF16_FEATURES, load_library

if TYPE_CHECKING:
    import torch

# name: (compiler flags, CPU features); load_kernel tries them in this order
KERNELS = {"amx": (("-mamx-tile", "-mamx-bf16"), ("amx_tile", "amx_bf16") + AVX512_BF16_FEATURES),
           "avx512": ((), AVX512_BF16_FEATURES)}


@functools.cache
def kernel(name: str):
    """The C function ``hbt_<name>_attention`` of one kernel, loaded, or None where it cannot
    run here."""
    flags, features = KERNELS[name]
    lib = load_library(f"{name}_attention", flags, features)
    if lib is None or (name == "amx" and lib.hbt_amx_request() != 0):
        return None  # Linux hands out AMX state on request
    function = getattr(lib, f"hbt_{name}_attention")
    function.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4 + [ctypes.c_float]
    return function


@functools.cache
def load_kernel():
    """The fastest kernel that runs here (AMX, else AVX512-BF16), or None."""
    return next((f for f in map(kernel, KERNELS) if f is not None), None)


def cpu_attention(qkv: torch.Tensor, attention_mask: torch.Tensor, heads: int,
                  function=None) -> torch.Tensor | None:
    """Self-attention of each text's tokens over its real tokens, as
    ``scaled_dot_product_attention`` with the key-padding mask, in the layout that follows it.

    ``qkv``: the QKV projection, ``[batch, length, 3 * hidden]`` (query, key, value, each
    ``heads`` x head size). ``attention_mask``: ``[batch, length]``, 1 for real tokens, which
    must come first in each row. ``function``: a :func:`kernel` (default :func:`load_kernel`).
    Returns ``[batch, length, hidden]`` (heads side by side), or None where the kernel does not
    apply: not bf16 on the CPU, gradients wanted, a head size that is not a multiple of 32, a
    mask with holes, or no kernel here.
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
    function = function or load_kernel()
    if function is None:
        return None
    qkv = qkv.contiguous()
    out = torch.empty(batch, length, hidden, dtype=torch.bfloat16)
    head_size = hidden // heads
    status = function(qkv.data_ptr(), lengths.data_ptr(), out.data_ptr(), batch, length, heads,
                      head_size, head_size ** -0.5)
    return out if status == 0 else None
