"""hbt-encode's BERT / XLM-R forward on AVX512-BF16 CPUs without importing PyTorch's Python package.

Why: ``import torch`` was 1.4-1.7 s of every hbt-encode start on the 2-core AMX Xeon. Loading
its C++ library (libtorch_cpu.so) is 0.3-0.4 s of that; the rest is Python modules that
``torch/__init__`` runs (torch._meta_registrations, torch.export, torch._prims, ...), none of
which an encoder's forward needs. ``native_bert.cpp`` runs the forward on that C++ library
directly, with the same ATen ops and C kernels (:mod:`.cpu_attention`, :mod:`.add_layer_norm`),
in the same order, as :class:`.fast_encoder.FastBertEncoder` and :class:`.encoder.BiEncoder`:
the embeddings are the same bit for bit (tests/test_native_bert.py).

How: compiled on first use by :mod:`.native` with the C++ compiler (``$CXX`` or ``c++``)
against the installed torch's headers and libraries (about 7 s, once per torch build), loaded
with ctypes. The weights are read from model.safetensors through a read-only memory map.

When: :func:`.encoding.encode_file` tries it only in a process that has not loaded torch or
tokenizers yet (a console script's, where it forks its tokenizer; in a notebook with torch
loaded the import is paid already and PyTorch's path runs). :func:`native_biencoder` returns
None, and the PyTorch path runs, unless the model is a BERT / XLM-R folder the fast path reads,
with heads a multiple of 32 wide and mean or CLS pooling; the dtype is bf16 (``auto`` on an
AVX512-BF16 CPU, with or without AMX); the device is the CPU (``auto`` only where the installed
torch has no CUDA); and everything compiles and loads here (x86-64 Linux, AVX512-BF16, a C and
a C++ compiler, torch's headers;
``HBT_CPU_KERNELS=0`` turns it off with the other kernels).
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import json
import os
import weakref
from types import SimpleNamespace

import numpy as np

from . import add_layer_norm, cpu_attention
from .bert_weights import check_complete, encoder_weight_names, weight_prefix
from .folder import load_failure
from .native import load_library
from .settings import RetrievalSettings

SAFETENSORS_DTYPES = {"F32": 0, "F16": 1, "BF16": 2}  # native_bert.cpp's blob() codes
POOLINGS = {"mean": 0, "cls": 1}
ERROR_BYTES = 1024


@functools.cache
def torch_build() -> tuple[str, str] | None:
    """(include, lib) folders of the installed torch, found without importing it; None where
    torch, its headers or its CPU library are missing."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = spec.submodule_search_locations[0]
    include, lib = os.path.join(root, "include"), os.path.join(root, "lib")
    if not (os.path.isfile(os.path.join(include, "ATen", "core", "Tensor.h"))
            and os.path.isfile(os.path.join(lib, "libtorch_cpu.so"))):
        return None
    return include, lib


def torch_has_cuda() -> bool:
    """Whether the installed torch is a CUDA build (hbt-encode's ``--device auto`` may pick a
    GPU there, which only PyTorch's path runs)."""
    build = torch_build()
    return build is not None and os.path.exists(os.path.join(build[1], "libtorch_cuda.so"))


@functools.cache
def load_kernel():
    """native_bert.cpp loaded, with the two C kernels it calls; None where any is missing."""
    build = torch_build()
    if build is None:
        return None
    include, lib_dir = build
    stat = os.stat(os.path.join(lib_dir, "libtorch_cpu.so"))
    flags = ("-std=c++17", "-w", f"-I{include}", f"-L{lib_dir}", "-ltorch_cpu", "-lc10",
             f"-Wl,-rpath,{lib_dir}",
             # another torch at the same path recompiles (the ABI is that build's)
             f"-DHBT_TORCH_BUILD={stat.st_size}_{stat.st_mtime_ns}")
    # loaded before the C kernels' first use: they then share torch's OpenMP runtime
    lib = load_library("native_bert", flags, language="c++")
    if lib is None or cpu_attention.load_kernel() is None or add_layer_norm.load_kernel() is None:
        return None
    lib.hbt_bert_load.restype = ctypes.c_void_p
    lib.hbt_bert_load.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2 + [
        ctypes.c_double, ctypes.c_float, ctypes.c_long, ctypes.c_int, ctypes.c_int,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.hbt_bert_embed.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2 + [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.hbt_bert_free.argtypes = [ctypes.c_void_p]
    return lib


def applies(config: dict, settings: RetrievalSettings, device: str, dtype: str) -> bool:
    """Whether this model and these options run here (the module docstring's "When")."""
    hidden, heads = config.get("hidden_size", 0), config.get("num_attention_heads", 0)
    return (device == "cpu" or (device == "auto" and not torch_has_cuda())) \
        and dtype in ("auto", "bf16") and settings.pooling in POOLINGS \
        and heads > 0 and hidden % heads == 0 and (hidden // heads) % 32 == 0 \
        and hidden % 16 == 0 and hidden <= 8192 and load_kernel() is not None


def native_biencoder(folder: str, config: dict, settings: RetrievalSettings, device: str,
                     dtype: str) -> NativeBiEncoder | None:
    """The model in ``folder`` (its config.json: ``config``) ready to encode, or None where it
    does not apply (then use :func:`.encoder.load_inference_biencoder`)."""
    if not applies(config, settings, device, dtype):
        return None
    lib = load_kernel()
    mapped, blobs = read_safetensors(os.path.join(folder, "model.safetensors"), folder)
    prefix = weight_prefix(blobs)
    blobs = {name[len(prefix):]: blob for name, blob in blobs.items()}
    check_complete(blobs, config, folder)
    ordered = [blobs[name] for name in encoder_weight_names(config)]
    if any(blob[0] not in SAFETENSORS_DTYPES or len(blob[1]) not in (1, 2) for blob in ordered):
        return None
    count = len(ordered)
    addresses = (ctypes.c_void_p * count)(*(blob[2] for blob in ordered))
    dtypes = (ctypes.c_int * count)(*(SAFETENSORS_DTYPES[blob[0]] for blob in ordered))
    shapes = (ctypes.c_long * (2 * count))(*(n for blob in ordered
                                             for n in (list(blob[1]) + [0])[:2]))
    heads = config["num_attention_heads"]
    position_offset = config.get("pad_token_id", 1) \
        if config["model_type"] == "xlm-roberta" else -1
    error = ctypes.create_string_buffer(ERROR_BYTES)
    handle = lib.hbt_bert_load(
        addresses, dtypes, shapes, config["num_hidden_layers"], heads,
        config.get("layer_norm_eps", 1e-12), (config["hidden_size"] // heads) ** -0.5,
        position_offset, POOLINGS[settings.pooling], int(settings.normalize),
        ctypes.cast(cpu_attention.load_kernel(), ctypes.c_void_p),
        ctypes.cast(add_layer_norm.load_kernel().hbt_add_layer_norm, ctypes.c_void_p),
        error, ERROR_BYTES)
    if not handle:
        raise load_failure(RuntimeError(error.value.decode(errors="replace")), folder)
    return NativeBiEncoder(lib, handle, mapped, settings, config)


def read_safetensors(path: str, folder: str):
    """(memory map, {name: (dtype, shape, address)}) of a .safetensors file, read-only."""
    try:
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
        size = int.from_bytes(mapped[:8].tobytes(), "little")
        header = json.loads(mapped[8:8 + size].tobytes())
        start = mapped.ctypes.data + 8 + size
        blobs = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            if not 0 <= begin <= end <= len(mapped) - 8 - size:
                raise ValueError(f"weight {name!r} lies outside the file")
            blobs[name] = (entry["dtype"], tuple(entry["shape"]), start + begin)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise load_failure(e, folder) from None
    return mapped, blobs


class NativeBiEncoder:
    """What hbt-encode needs of :class:`.encoder.BiEncoder`, on native_bert.cpp."""

    device_type = "cpu"
    dtype_name = "bfloat16"

    def __init__(self, lib, handle: int, mapped: np.memmap, settings: RetrievalSettings,
                 config: dict):
        self.lib, self.handle, self.settings = lib, handle, settings
        self.config = SimpleNamespace(hidden_size=config["hidden_size"])
        # the weights stored in bf16 are read where they lie: the map lives as long as the model
        weakref.finalize(self, lib.hbt_bert_free, handle).atexit = False
        self._mapped = mapped

    def embed_arrays(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Embeddings (float32) of a padded batch: token ids and 0/1 mask, int64, real tokens
        first in every row."""
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        lengths = np.ascontiguousarray(mask.sum(axis=1), dtype=np.int32)
        out = np.empty((ids.shape[0], self.config.hidden_size), dtype=np.float32)
        error = ctypes.create_string_buffer(ERROR_BYTES)
        if self.lib.hbt_bert_embed(self.handle, ids.ctypes.data, lengths.ctypes.data,
                                   ids.shape[0], ids.shape[1], out.ctypes.data, error,
                                   ERROR_BYTES) != 0:
            raise RuntimeError(f"native encoder: {error.value.decode(errors='replace')}")
        return out
