"""hbt-encode's tokenizer in a forked process: the same ids as in process, used by the command,
and never forked where torch or tokenizers are loaded already."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, child_pids, running
from tiny_models import make_tiny_model, texts

from hbt_tools.encoding import encode_file
from hbt_tools.io import load_embeddings


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models"), "e5")


def fresh_python(code: str, *args) -> str:
    """stdout of ``code`` run by a new interpreter (nothing imported yet, as in a command)."""
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True,
                         capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1"))
    return out.stdout


SAME_IDS = """
import json, sys
from hbt_tools.models.fast_tokenizer import FastTokenizer, TokenizerProcess, start_tokenizer_process
folder, texts = sys.argv[1], json.loads(sys.argv[2])
process = start_tokenizer_process(folder)
assert isinstance(process, TokenizerProcess)
forked = [process(texts, max_length=m)["input_ids"] for m in (None, 12)] + [process.pad_token_id]
process.close()
here = FastTokenizer(folder)
print(json.dumps([forked, [here(texts, max_length=m)["input_ids"] for m in (None, 12)]
                  + [here.pad_token_id]]))
"""


def test_forked_tokenizer_gives_the_ids_of_the_in_process_one(model):
    forked, here = json.loads(fresh_python(SAME_IDS, model, json.dumps(texts())))
    assert forked == here
    assert max(map(len, here[0])) > 12 and max(map(len, here[1])) == 12  # truncation was on


COUNTED_ENCODE = """
import sys
from hbt_tools.models import fast_tokenizer
started = []
class Counted(fast_tokenizer.TokenizerProcess):
    def __init__(self, folder):
        started.append(folder)
        super().__init__(folder)
fast_tokenizer.TokenizerProcess = Counted
from hbt_tools.encoding import encode_file
encode_file(sys.argv[1], sys.argv[2], sys.argv[3], "passage", dtype="fp32", chunk_rows=7,
            progress=False)
print(len(started))
"""


def test_encode_file_tokenizes_in_a_forked_process_with_the_same_embeddings(model, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "text": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(texts())), encoding="utf-8")
    # a fresh command process forks its tokenizer ...
    assert fresh_python(COUNTED_ENCODE, model, data, tmp_path / "forked.npy").strip() == "1"
    # ... this one has torch loaded already, so it tokenizes in process
    encode_file(model, str(data), str(tmp_path / "here.npy"), "passage", dtype="fp32",
                chunk_rows=7, progress=False)
    forked, forked_ids = load_embeddings(tmp_path / "forked.npy")
    here, here_ids = load_embeddings(tmp_path / "here.npy")
    assert forked_ids == here_ids and len(here_ids) == len(texts())
    np.testing.assert_array_equal(forked, here)


def test_no_fork_once_torch_or_tokenizers_is_loaded(model):
    from hbt_tools.models.fast_tokenizer import start_tokenizer_process

    assert "torch" in sys.modules  # as in this test process
    assert start_tokenizer_process(model) is None
    loaded = fresh_python("import sys, tokenizers\n"
                          "from hbt_tools.models.fast_tokenizer import start_tokenizer_process\n"
                          "print(start_tokenizer_process(sys.argv[1]))", model)
    assert loaded.strip() == "None"


BUSY_PARENT = """
import signal, sys
def unwind(signum, frame):
    raise SystemExit(128 + signum)
signal.signal(signal.SIGTERM, unwind)  # as hbt-encode does, before it forks the worker
from hbt_tools.models.fast_tokenizer import start_tokenizer_process
process = start_tokenizer_process(sys.argv[1])
process.pad_token_id
print("ready", flush=True)
while True:
    process(["ein langer Satz, der viele Token hat"] * 20000)
"""


def test_the_worker_dies_with_a_killed_parent_even_while_it_tokenizes(model):
    """SIGKILL leaves the parent no clean-up: the worker's death signal (SIGTERM) must end it
    even mid-task. With the parent's unwinding SIGTERM handler inherited, the executor caught
    the SystemExit as the task's error and then waited for work on a pipe it holds open itself,
    forever."""
    parent = subprocess.Popen([sys.executable, "-c", BUSY_PARENT, model], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert parent.stdout.readline().strip() == "ready"
        (worker,) = child_pids(parent.pid)
        time.sleep(1.0)  # well inside a 20,000-text task
    finally:
        parent.kill()
        parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and running(worker):
        time.sleep(0.05)
    alive = running(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the tokenizer worker outlived its killed parent"
