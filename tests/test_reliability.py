"""Issue 6 across commands: closed pipes, kill -9 of hbt-prepare, determinism of indexes, runs
and scores, safe loading (a scan of the source) and hostile ids that look like paths.

Per-command tests hold the rest: bad input (the CommandContract cases), kill -9 of hbt-train
(+ --resume), hbt-encode, hbt-index and hbt-make-batches, `| head` of hbt-make-batches and
hbt-search, byte-identical batches, batch-size independence of hbt-encode.
"""
import ast
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_cli
from hbt_tools.indexing import IndexSettings, index_embeddings
from hbt_tools.io import save_embeddings
from hbt_tools.search import search_to_run

PYTHON_ENV = dict(os.environ, PYTHONPATH=ROOT)


def piped_to_head(command_line):
    """Run ``COMMAND | head -n 1`` in bash with pipefail -> CompletedProcess."""
    script = f"set -o pipefail; {command_line} | head -n 1"
    return subprocess.run(["bash", "-c", script], capture_output=True, timeout=120,
                          env=PYTHON_ENV)


def bin_path(name):
    return f"{sys.executable} {ROOT}/bin/{name}"


# ---------------------------------------------------------------- closed pipes

def test_score_to_head_ends_quietly(tmp_path):
    # --per-query over 4000 queries: far more than a pipe buffer, so the write meets EPIPE
    lines = [f"q{i} Q0 d{i} 1 1.0 t\n" for i in range(4000)]
    (tmp_path / "run").write_text("".join(lines))
    (tmp_path / "qrels").write_text("".join(f"q{i} 0 d{i} 1\n" for i in range(4000)))
    r = piped_to_head(f"{bin_path('hbt-score')} --qrels {tmp_path}/qrels --per-query -o - "
                      f"{tmp_path}/run")
    assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()
    assert r.stdout == b"{\n"


def test_prepare_pairs_to_head_ends_quietly(tmp_path):
    paragraphs = [{"context": f"Sentence one of {i}. Answer {i} is here.",
                   "qas": [{"id": f"q{i}", "question": f"Where is answer {i}?",
                            "answers": [{"text": f"Answer {i}",
                                         "answer_start": len(f"Sentence one of {i}. ")}]}]}
                  for i in range(4000)]
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "en.json").write_text(json.dumps({"data": [{"paragraphs": paragraphs}]}))
    r = piped_to_head(f"{bin_path('hbt-prepare')} pairs {tmp_path}/squad -o -")
    assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()
    assert json.loads(r.stdout)["group"] == "q0"


# ---------------------------------------------------------------- kill -9

def test_kill_9_of_prepare_leaves_no_output_files(tmp_path):
    """The corpus comes from a pipe we hold open: hbt-prepare is killed mid-stream, after it
    has written part of its output to hidden temporary files."""
    (tmp_path / "topics.tsv").write_text("q1\tWhere?\n")
    (tmp_path / "qrels.tsv").write_text("q1 Q0 d1 1\n")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "bin", "hbt-prepare"), "miracl", "--topics",
         tmp_path / "topics.tsv", "--qrels", tmp_path / "qrels.tsv", "--corpus", "-",
         "--lang", "xx", "-o", out], env=PYTHON_ENV, stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL)
    try:
        row = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            proc.stdin.write(b"".join(b'{"docid": "d%d", "title": "T", "text": "%s"}\n'
                                      % (row + i, b"x" * 200) for i in range(2000)))
            proc.stdin.flush()
            row += 2000
            temps = [p for p in out.iterdir() if p.name.startswith(".corpus.jsonl.tmp")] \
                if out.is_dir() else []
            if temps and temps[0].stat().st_size > 0:
                break
        else:
            pytest.fail("hbt-prepare never started writing the corpus")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()
    assert proc.returncode == -signal.SIGKILL
    assert not {p.name for p in out.iterdir()} & {"queries.jsonl", "qrels.trec", "corpus.jsonl"}


# ---------------------------------------------------------------- determinism

def _vectors(rows, dim=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("settings", [IndexSettings(type="flat"),
                                      IndexSettings(type="hnsw", hnsw_m=8, ef_construction=40),
                                      IndexSettings(type="ivfpq", nlist=8, pq_m=4, nbits=6,
                                                    seed=3)],
                         ids=["flat", "hnsw", "ivfpq"])
def test_same_inputs_give_identical_indexes_and_runs(tmp_path, settings):
    langs = ["de", "en"]
    save_embeddings(tmp_path / "c.npy", _vectors(3000),
                    [{"id": f"d{i}", "lang": langs[i % 2]} for i in range(3000)])
    save_embeddings(tmp_path / "q.npy", _vectors(50, seed=1),
                    [{"id": f"q{i}", "lang": "en"} for i in range(50)])
    runs, indexes = [], []
    for attempt in ("a", "b"):
        index = tmp_path / f"{attempt}.index"
        index_embeddings(str(tmp_path / "c.npy"), str(index), settings, progress=False)
        indexes.append((index / "index.faiss").read_bytes())
        run = tmp_path / f"{attempt}.run"
        search_to_run([str(index)], str(tmp_path / "q.npy"), str(run), k=20, langs=["de"],
                      progress=False)
        runs.append(run.read_bytes())
    assert indexes[0] == indexes[1]
    assert runs[0] == runs[1] and len(runs[0].splitlines()) == 50 * 20


def test_same_inputs_give_identical_scores(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).write_text("".join(
            f"q{q} Q0 d{d} 1 {rng.integers(0, 5) / 4} t\n" for q in range(30) for d in range(20)))
    (tmp_path / "qrels").write_text("".join(f"q{q} 0 d{(q * 7) % 20} 1\n" for q in range(30)))
    outputs = []
    for _ in range(2):
        r = run_cli("hbt-score", "--qrels", tmp_path / "qrels", "--compare", tmp_path / "a",
                    tmp_path / "b", "--permutations", 500, "--seed", 4)
        assert r.returncode == 0, r.stderr.decode()
        outputs.append(r.stdout)
    assert outputs[0] == outputs[1]
    assert 0 < json.loads(outputs[0])["metrics"]["map"]["p_value"] <= 1


# ---------------------------------------------------------------- safe loading

def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value.id if isinstance(func, ast.Attribute) and \
                isinstance(func.value, ast.Name) else ""
            keywords = {k.arg: k.value for k in node.keywords}
            yield node, owner, name, keywords


def _constant(keywords, name):
    value = keywords.get(name)
    return value.value if isinstance(value, ast.Constant) else ...


def test_source_loads_and_saves_only_safely():
    problems, seen = [], set()
    package = os.path.join(ROOT, "hbt_tools")
    for folder, _, names in os.walk(package):
        for file_name in names:
            if not file_name.endswith(".py"):
                continue
            path = os.path.join(folder, file_name)
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), path)
            where = os.path.relpath(path, ROOT)
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    modules = [a.name for a in node.names] if isinstance(node, ast.Import) \
                        else [node.module or ""]
                    if any(m.split(".")[0] in ("pickle", "dill", "joblib") for m in modules):
                        problems.append(f"{where}:{node.lineno}: imports a pickle module")
            for node, owner, name, keywords in _calls(tree):
                at = f"{where}:{node.lineno}"
                seen.add((owner, name))
                if owner in ("np", "numpy") and name == "load" \
                        and _constant(keywords, "allow_pickle") is not False:
                    problems.append(f"{at}: np.load without allow_pickle=False")
                if owner == "torch" and name == "load" \
                        and _constant(keywords, "weights_only") is not True:
                    problems.append(f"{at}: torch.load without weights_only=True")
                if name == "save_pretrained" and owner != "tokenizer" \
                        and _constant(keywords, "safe_serialization") is not True:
                    problems.append(f"{at}: save_pretrained without safe_serialization=True")
                if name == "from_pretrained" and ("trust_remote_code" not in keywords
                                                  or _constant(keywords, "trust_remote_code")
                                                  is True):
                    problems.append(f"{at}: from_pretrained without the caller's "
                                    "trust_remote_code")
                if (isinstance(node.func, ast.Name) and name in ("eval", "exec")) or \
                        (owner == "os" and name in ("system", "popen")):
                    problems.append(f"{at}: {name}()")
                if _constant(keywords, "shell") is True:
                    problems.append(f"{at}: shell=True")
    assert not problems, "\n".join(problems)
    # the scan did see the calls it checks
    assert {("np", "load"), ("torch", "load")} <= seen
    assert any(name == "from_pretrained" for _, name in seen)


def test_ids_that_look_like_paths_stay_data(tmp_path):
    """Ids such as '../../x' or '/tmp/x' pass through prepare, index, search and score as plain
    strings: no command makes a file of them; outputs appear only where -o says."""
    hostile = ["../../hbt-evil", "/tmp/hbt-evil-absolute", "a/b/../../hbt-evil", "..", "~",
               "$(touch${IFS}hbt-evil)", "`touch${IFS}hbt-evil`", "*", "-o"]
    work = tmp_path / "work"
    (work / "squad").mkdir(parents=True)
    context = "First sentence. Second sentence."
    (work / "squad" / "en.json").write_text(json.dumps({"data": [{"paragraphs": [{
        "context": context, "sentence_breaks": [[0, 15], [16, len(context)]],
        "qas": [{"id": qid, "question": "Which?",
                 "answers": [{"text": "Second", "answer_start": 16}]} for qid in hostile]}]}]}))
    r = run_cli("hbt-prepare", "lareqa", work / "squad", "-o", work / "eval", cwd=work)
    assert r.returncode == 0, r.stderr.decode()
    queries = [json.loads(line) for line in (work / "eval" / "queries.jsonl").open()]
    assert [q["group"] for q in queries] == hostile

    save_embeddings(work / "c.npy", _vectors(len(hostile)),
                    [{"id": docid, "lang": "en"} for docid in hostile])
    save_embeddings(work / "q.npy", _vectors(len(hostile), seed=1),
                    [{"id": qid, "lang": "en"} for qid in hostile])
    (work / "qrels").write_text("".join(f"{qid} 0 {qid} 1\n" for qid in hostile))
    for name, args in (("hbt-index", [work / "c.npy", "-o", work / "c.index"]),
                       ("hbt-search", ["--index", work / "c.index", work / "q.npy", "-k", 3,
                                       "-o", work / "run"]),
                       ("hbt-score", ["--qrels", work / "qrels", work / "run", "--per-query",
                                      "-o", work / "scores.json"])):
        r = run_cli(name, *args, cwd=work)
        assert r.returncode == 0, r.stderr.decode()
    run_ids = {line.split()[2] for line in (work / "run").read_text().splitlines()}
    assert run_ids <= set(hostile)
    assert set(json.loads((work / "scores.json").read_text())["per_query"]) == set(hostile)

    files = sorted(os.path.relpath(os.path.join(folder, name), tmp_path)
                   for folder, _, names in os.walk(tmp_path) for name in names)
    assert files == sorted([
        "work/squad/en.json", "work/eval/queries.jsonl", "work/eval/corpus.jsonl",
        "work/eval/qrels.trec", "work/c.npy", "work/c.ids.jsonl", "work/q.npy",
        "work/q.ids.jsonl", "work/qrels", "work/c.index/meta.json", "work/c.index/index.faiss",
        "work/c.index/ids.jsonl", "work/run", "work/scores.json"])
    assert not os.path.exists("/tmp/hbt-evil-absolute")
    assert not any("hbt-evil" in name for name in os.listdir(tmp_path.parent))
