"""hbt-encode's C kernels (``<name>.c`` beside this file): compiled on first use, loaded with ctypes.

Each kernel's source is compiled with the system's C compiler (``$CC`` or ``cc``; for
``native_bert.cpp`` the C++ compiler, ``$CXX`` or ``c++``) into
``<cache>/kernels/<name>-<hash of source and flags>.so`` the first time it is needed (about half
a second; native_bert.cpp, which includes PyTorch's headers, 7-10 s), atomically, and loaded
with ctypes (a call releases the GIL). The kernels run on OpenMP threads: linked against
``libgomp.so.1``, they resolve to the copy PyTorch loaded, so they share its thread pool and
thread count (threads of their own competed with PyTorch's still-spinning workers). Where
anything is missing (not x86-64 Linux, a CPU feature, the compiler, a failed compile:
remembered in ``<name>-<hash>.so.failed`` with the compiler's message; delete it to try again)
:func:`load_library` returns None and the callers use PyTorch. ``HBT_CPU_KERNELS=0`` turns
every kernel off.
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

HERE = os.path.dirname(os.path.abspath(__file__))
COMMON_FLAGS = ("-O3", "-shared", "-fPIC", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl",
                "-mavx512bf16")


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


# what COMMON_FLAGS compile for, so what every kernel needs at the least
AVX512_BF16_FEATURES = ("avx512bw", "avx512vl", "avx512_bf16")
LOCAL_HEADERS = ("attention_common.h",)  # the kernels' own, beside them
# source suffix and compiler (environment variable, default) per language
LANGUAGES = {"c": (".c", "CC", "cc"), "c++": (".cpp", "CXX", "c++")}


def library_path(name: str, flags: tuple[str, ...], cache_dir: str, compiler: str,
                 language: str = "c") -> str:
    digest = hashlib.sha256(" ".join([compiler, *flags]).encode())
    for source in (name + LANGUAGES[language][0], *LOCAL_HEADERS):  # a header edit recompiles
        with open(os.path.join(HERE, source), "rb") as fh:
            digest.update(fh.read())
    digest = digest.hexdigest()
    return os.path.join(cache_dir, "kernels", f"{name}-{digest[:16]}.so")


def compile_library(name: str, flags: tuple[str, ...], cache_dir: str,
                    language: str = "c") -> str | None:
    """Path of ``name``'s compiled library, compiling it if needed; None where that fails."""
    suffix, variable, default = LANGUAGES[language]
    compiler = shutil.which(os.environ.get(variable) or default)
    if compiler is None:
        return None
    path = library_path(name, flags, cache_dir, compiler, language)
    if os.path.exists(path):
        return path
    if os.path.exists(path + ".failed"):
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run([compiler, os.path.join(HERE, name + suffix), *flags, "-o", tmp],
                              capture_output=True, text=True, timeout=120)
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
def load_library(name: str, extra_flags: tuple[str, ...] = (),
                 cpu_features: tuple[str, ...] = AVX512_BF16_FEATURES,
                 language: str = "c"):
    """``name``'s loaded library, or None (see the module docstring)."""
    if (os.environ.get("HBT_CPU_KERNELS", "1") == "0" or sys.platform != "linux"
            or platform.machine().lower() not in ("x86_64", "amd64")
            or not all(flag in cpu_flags() for flag in cpu_features)):
        return None
    from .offline import cache_root

    path = compile_library(name, COMMON_FLAGS + extra_flags, cache_root(), language)
    try:
        return ctypes.CDLL(path) if path else None
    except OSError:
        return None
