"""Compiling and loading the C kernels (hbt_tools.models.native): once per source and flags,
atomically, a failure remembered, and nothing at all where it cannot work or is switched off."""
import os
import shutil
import stat

import pytest

from hbt_tools.models import add_layer_norm, cpu_attention, native, native_bert

FLAGS = native.COMMON_FLAGS


def fake_compiler(tmp_path, exit_code):
    """A ``cc`` that counts its runs in a file and exits with ``exit_code``."""
    script = tmp_path / "fake-cc"
    script.write_text(f"#!/bin/sh\necho run >> {tmp_path / 'runs'}\n"
                      f"echo 'fake-cc: no such flag' >&2\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_a_failed_compile_is_remembered_and_not_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", fake_compiler(tmp_path, 1))
    cache = tmp_path / "cache"
    assert native.compile_library("add_layer_norm", FLAGS, str(cache)) is None
    assert native.compile_library("add_layer_norm", FLAGS, str(cache)) is None
    assert (tmp_path / "runs").read_text().count("run") == 1
    (failed,) = (cache / "kernels").glob("*.failed")
    assert "no such flag" in failed.read_text()
    assert not [p for p in (cache / "kernels").iterdir() if p.suffix in (".so", ".tmp")]


def test_no_compiler_means_no_library(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "not-there"))
    assert native.compile_library("add_layer_norm", FLAGS, str(tmp_path / "cache")) is None


@pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler")
def test_compiled_once_then_reused_and_recompiled_for_other_flags(tmp_path):
    path = native.compile_library("add_layer_norm", FLAGS, str(tmp_path))
    assert path and os.path.exists(path)
    first = os.stat(path).st_mtime_ns
    assert native.compile_library("add_layer_norm", FLAGS, str(tmp_path)) == path
    assert os.stat(path).st_mtime_ns == first
    other = native.compile_library("add_layer_norm", FLAGS + ("-O2",), str(tmp_path))
    assert other and other != path
    assert not [p for p in os.listdir(tmp_path / "kernels") if p.endswith(".tmp")]


def test_an_edited_shared_header_gives_another_library(monkeypatch, tmp_path):
    """The attention kernels include attention_common.h: a cached build from before an edit of
    it must not be loaded."""
    for name in ("avx512_attention.c", "attention_common.h"):
        shutil.copy(os.path.join(native.HERE, name), tmp_path / name)
    monkeypatch.setattr(native, "HERE", str(tmp_path))
    before = native.library_path("avx512_attention", FLAGS, "cache", "cc")
    with open(tmp_path / "attention_common.h", "a") as fh:
        fh.write("/* edited */\n")
    assert native.library_path("avx512_attention", FLAGS, "cache", "cc") != before


def test_switched_off_by_the_environment(monkeypatch):
    loaders = (native.load_library, cpu_attention.kernel, cpu_attention.load_kernel,
               add_layer_norm.load_kernel, native_bert.load_kernel)
    monkeypatch.setenv("HBT_CPU_KERNELS", "0")
    for loader in loaders:
        loader.cache_clear()
    try:
        assert native.load_library("add_layer_norm") is None
        assert cpu_attention.load_kernel() is None and add_layer_norm.load_kernel() is None
        assert native_bert.load_kernel() is None
    finally:
        monkeypatch.delenv("HBT_CPU_KERNELS")
        for loader in loaders:
            loader.cache_clear()


def test_a_cpu_without_the_features_gets_no_library(monkeypatch):
    native.load_library.cache_clear()
    monkeypatch.setattr(native, "cpu_flags", lambda: frozenset({"sse2", "avx2"}))
    try:
        assert native.load_library("add_layer_norm") is None
    finally:
        native.load_library.cache_clear()
