import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
sys.path.insert(0, os.path.join(ROOT, "tests"))


def torch_sees_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# The one marker for GPU-only tests (they run where a device machine is lent).
needs_cuda = pytest.mark.skipif(not torch_sees_cuda(),
                                reason="needs a CUDA GPU (run on a GPU machine)")


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: ppid
            children.append(int(entry))
    return children


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whatever reaps it here)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def record_kernel_calls(monkeypatch, module, name: str) -> list[bool]:
    """Route ``module.name`` (a C kernel's wrapper, None where it does not apply) through a
    recorder; the returned list gets, per call, whether the kernel ran."""
    kernel = getattr(module, name)
    calls = []

    def recorded(*args):
        out = kernel(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(module, name, recorded)
    return calls


def encoder_with_and_without_kernel(monkeypatch, encoder, ids, mask, module, name: str):
    """``encoder``'s hidden states in fp32, then in bf16 with the C kernel ``module.name``
    (recorded: see :func:`record_kernel_calls`), then in bf16 with it switched off; and the
    record. The encoder is left in bf16."""
    import torch

    with torch.inference_mode():
        exact = encoder(ids, mask).last_hidden_state
        encoder.to(torch.bfloat16)
        calls = record_kernel_calls(monkeypatch, module, name)
        with_kernel = encoder(ids, mask).last_hidden_state
        monkeypatch.setattr(module, name, lambda *args: None)
        without = encoder(ids, mask).last_hidden_state
    return exact, with_kernel, without, calls


def assert_kernel_as_close(with_kernel, without, exact, mask, factor: float) -> None:
    """Over the real tokens, the kernel's output differs from PyTorch's, and its mean error
    against ``exact`` is at most ``factor`` times PyTorch's."""
    real = mask.bool()
    assert not (with_kernel == without).all()
    ours = (with_kernel.float() - exact)[real].abs().mean()
    torchs = (without.float() - exact)[real].abs().mean()
    assert ours <= torchs * factor


def run_cli(name, *args, input=None, env=None, cwd=None, timeout=600):
    """Run ``bin/NAME ARGS`` in a real subprocess; returns CompletedProcess (bytes)."""
    full_env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    full_env.pop("HBT_DEBUG", None)
    full_env.update(env or {})
    if isinstance(input, str):
        input = input.encode()
    return subprocess.run([sys.executable, os.path.join(ROOT, "bin", name), *map(str, args)],
                          input=input, capture_output=True, env=full_env, cwd=cwd, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


def shared_path(*parts):
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"needs {path}")
    return path
