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
