"""Start-up and exit of the commands' processes: commands that need no neural network never
import torch or transformers (fast start-up); a finished command ends without the
interpreter's teardown, but with its atexit handlers run and its output flushed."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

LIGHT = ["prepare", "make_batches", "score", "index", "search"]


def run_main(module: str, args: list[str], before: str = "") -> subprocess.CompletedProcess:
    """``hbt_tools.commands.MODULE.main()`` in a fresh interpreter with ``args`` as its argv,
    as a console script runs it; ``before``: code run first."""
    code = (f"import sys\n{before}\nsys.argv = ['x', *{args!r}]\n"
            f"from hbt_tools.commands.{module} import main\nmain()\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)


@pytest.mark.parametrize("module", LIGHT)
def test_light_commands_do_not_import_torch(module):
    # checked at exit: the command ends the process itself
    r = run_main(module, ["--help"], before=(
        "import atexit\natexit.register(lambda: print('heavy:', sorted(m for m in "
        "('torch', 'transformers') if m in sys.modules)))"))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().splitlines()[-1] == "heavy: []", r.stdout.decode()


def test_finished_command_skips_teardown_but_runs_atexit_and_flushes(tmp_path):
    run, qrels = tmp_path / "run.trec", tmp_path / "qrels.trec"
    queries = [f"q{i}" for i in range(3000)]  # per-query lines: more than stdout's buffer
    run.write_text("".join(f"{q} Q0 d{j} {j + 1} {1.0 / (j + 1)} t\n"
                           for q in queries for j in range(3)))
    qrels.write_text("".join(f"{q} 0 d1 1\n" for q in queries))
    r = run_main("score", [str(run), "--qrels", str(qrels), "--per-query"], before=(
        "import atexit\n"
        "class Teardown:\n    def __del__(self):\n        print('teardown ran')\n"
        "kept_until_teardown = Teardown()\n"
        "atexit.register(lambda: print('atexit ran'))"))
    assert r.returncode == 0, r.stderr.decode()
    out, _, last = r.stdout.decode().rstrip("\n").rpartition("\n")
    assert last == "atexit ran" and "teardown ran" not in out
    scores = json.loads(out)  # all of it: the JSON parses, every query is there
    assert scores["queries"] == 3000 and sorted(scores["per_query"]) == sorted(queries)


def test_error_exit_code_survives_the_fast_exit(tmp_path):
    r = run_main("score", [str(tmp_path / "missing.trec"), "--qrels", str(tmp_path / "q.trec")])
    assert r.returncode == 2 and "no such file" in r.stderr.decode()


# records the thread-pool variables at the moment numpy starts loading
SEEN_BY_NUMPY = """
import importlib.abc, os
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == 'numpy' and 'seen' not in globals():
            globals()['seen'] = [os.environ.get(v) for v in
                                 ('OPENBLAS_THREAD_TIMEOUT', 'OMP_WAIT_POLICY')]
            atexit.register(lambda: print('numpy saw:', seen))
        return None
import atexit
sys.meta_path.insert(0, Watch())
"""


@pytest.mark.parametrize("user", [None, "ACTIVE"])
def test_search_sets_its_thread_pools_before_numpy_loads(tmp_path, user, monkeypatch):
    """hbt-search's BLAS and OpenMP threads sleep when idle (hbt_tools.thread_pools), which
    numpy and faiss read once, when they load; a user's own setting stays."""
    if user:
        monkeypatch.setenv("OMP_WAIT_POLICY", user)
    else:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    r = run_main("search", ["--help"], before=SEEN_BY_NUMPY)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().splitlines()[-1] == f"numpy saw: ['4', '{user or 'PASSIVE'}']"
