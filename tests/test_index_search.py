"""hbt-index and hbt-search: exact flat top-k (trec_eval's tie order), --lang pools, shards,
approximate indexes, run format, bad input, closed pipes and kill -9 atomicity."""
import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cli_contract import CommandContract, npy_cases
from conftest import ROOT, run_cli
from hbt_tools.indexing import IndexSettings, index_embeddings, load_index
from hbt_tools.trec import is_trec_word
from hbt_tools.io import InputError, save_embeddings
from hbt_tools.search import check_tag, search_to_run
from hbt_tools.trec import read_run

LANGS = ["de", "en", "fr"]


def write_embeddings(path, matrix, ids=None, langs=None):
    ids = ids if ids is not None else [f"d{i}" for i in range(len(matrix))]
    langs = langs if langs is not None else [LANGS[i % len(LANGS)] for i in range(len(matrix))]
    save_embeddings(str(path), matrix, ({"id": i, "lang": l} for i, l in zip(ids, langs)))
    return str(path)


def tied_vectors(rows, dim=16, seed=0):
    """Multiples of 1/8 in [-1/2, 1/2]: every inner product is exact in float32, and many tie."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-4, 5, size=(rows, dim)) / 8).astype(np.float32)


def clustered_vectors(rows, dim=32, clusters=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, rows)] + 0.3 * rng.standard_normal((rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force_run(queries, qids, passages, docids, k, tag="hbt", allowed=None):
    """The run trec_eval's order defines: printed score descending, then docid descending."""
    scores = queries.astype(np.float64) @ passages.astype(np.float64).T
    lines = []
    for qi, qid in enumerate(qids):
        hits = [(float(f"{s:.6f}"), docids[j], f"{s:.6f}") for j, s in enumerate(scores[qi])
                if allowed is None or allowed[j]]
        hits.sort(key=lambda hit: (hit[0], hit[1]), reverse=True)
        lines += [f"{qid} Q0 {d} {rank} {text} {tag}\n"
                  for rank, (_, d, text) in enumerate(hits[:k], 1)]
    return "".join(lines)


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """A flat index over 600 tied vectors (ids d0..d599, de/en/fr) and 40 queries."""
    root = tmp_path_factory.mktemp("tied")
    passages = tied_vectors(600)
    queries = tied_vectors(40, seed=1)
    passages[300:320] = passages[0]  # exact duplicates: equal scores for every query
    write_embeddings(root / "c.npy", passages)
    write_embeddings(root / "q.npy", queries, [f"q{i}" for i in range(40)], ["en"] * 40)
    index_embeddings(root / "c.npy", root / "c.index", progress=False)
    return root, passages, queries


def run_text(index_dirs, queries_npy, **options):
    out = io.BytesIO()
    search_to_run([str(d) for d in index_dirs], str(queries_npy), out, progress=False, **options)
    return out.getvalue().decode()


# ---------------------------------------------------------------- the shared contract

class TestIndexContract(CommandContract):
    command = "hbt-index"

    def valid_args(self, tmp_path):
        return [write_embeddings(tmp_path / "c.npy", tied_vectors(50)), "-o", tmp_path / "idx"]

    def missing_file_args(self, tmp_path, missing):
        return [str(missing), "-o", tmp_path / "idx"]

    def bad_inputs(self, tmp_path):
        good = tied_vectors(30)
        out = str(tmp_path / "idx")
        yield from npy_cases(tmp_path, "corpus", lambda npy: [npy, "-o", out])
        ids = [f"d{i}" for i in range(30)]
        spaced = write_embeddings(tmp_path / "sp.npy", good, ids[:29] + ["d 29"])
        yield "id with a space", [spaced, "-o", out], None, "whitespace"
        nul = write_embeddings(tmp_path / "nul.npy", good, ids[:29] + ["d\x0029"])
        yield "id with a NUL", [nul, "-o", out], None, "NUL"
        ok = write_embeddings(tmp_path / "ok.npy", good)
        yield "option of another type", [ok, "-o", out, "--nlist", "4"], None, "--type ivfpq"
        yield "pq-m not a divisor", [ok, "-o", out, "--type", "ivfpq", "--pq-m", "5"], None, \
            "does not divide"
        yield "too few rows to train", [ok, "-o", out, "--type", "ivfpq"], None, \
            "training rows"
        yield "bad --hnsw-m", [ok, "-o", out, "--type", "hnsw", "--hnsw-m", "0"], None, "hnsw-m"
        (tmp_path / "notes.txt").write_text("keep me")
        yield "output is a file", [ok, "-o", tmp_path / "notes.txt"], None, "not replacing"


class TestSearchContract(CommandContract):
    command = "hbt-search"

    @pytest.fixture(autouse=True)
    def _index(self, tied):
        self.root = tied[0]

    def valid_args(self, tmp_path):
        return ["--index", self.root / "c.index", self.root / "q.npy", "-k", "5",
                "-o", tmp_path / "run"]

    def missing_file_args(self, tmp_path, missing):
        return ["--index", self.root / "c.index", str(missing)]

    def bad_inputs(self, tmp_path):
        index = str(self.root / "c.index")
        queries = str(self.root / "q.npy")
        run = str(tmp_path / "run")
        other_dim = write_embeddings(tmp_path / "q8.npy", tied_vectors(3, dim=8), ["a", "b", "c"])
        yield ("dim mismatch", ["--index", index, other_dim, "-o", run], None,
               f"q8.npy: queries have dim 8 but index {index} has dim 16")
        yield from npy_cases(tmp_path, "queries", lambda npy: ["--index", index, npy, "-o", run],
                             dim=16)
        (tmp_path / "empty-dir").mkdir()
        yield ("not an index", ["--index", tmp_path / "empty-dir", queries, "-o", run], None,
               "not an hbt index")
        yield ("a file as index", ["--index", queries, queries, "-o", run], None,
               "not an hbt index")
        yield "unknown --lang", ["--index", index, queries, "--lang", "xx", "-o", run], None, \
            "no passages in language 'xx'"
        yield "-k 0", ["--index", index, queries, "-k", "0", "-o", run], None, "-k"
        yield "-k not a number", ["--index", index, queries, "-k", "ten", "-o", run], None, "-k"
        yield "tag with a space", ["--index", index, queries, "--tag", "a b", "-o", run], None, \
            "run tag"


def test_broken_index_parts_are_one_line_errors(tied, tmp_path):
    import shutil

    root = tied[0]
    broken = tmp_path / "broken.index"
    shutil.copytree(root / "c.index", broken)
    (broken / "index.faiss").write_bytes(b"not faiss")
    r = run_cli("hbt-search", "--index", broken, root / "q.npy")
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1, err
    assert "index.faiss: not a faiss index" in err and r.stdout == b""


# ---------------------------------------------------------------- exactness

def test_flat_search_equals_brute_force_with_trec_eval_tie_order(tied):
    root, passages, queries = tied
    r = run_cli("hbt-search", "--index", root / "c.index", root / "q.npy", "-k", "30")
    assert r.returncode == 0, r.stderr.decode()
    docids = [f"d{i}" for i in range(len(passages))]
    expected = brute_force_run(queries, [f"q{i}" for i in range(40)], passages, docids, 30)
    assert r.stdout.decode() == expected
    # The data really tests ties, including ties cut by k (docid order decides who is in).
    scores = [line.split()[4] for line in expected.splitlines()]
    assert len(set(scores)) < len(scores) / 3


def test_ties_across_the_cut_and_small_batches(tied):
    root, passages, queries = tied
    docids = [f"d{i}" for i in range(len(passages))]
    qids = [f"q{i}" for i in range(40)]
    for k in (1, 7, 64):
        got = run_text([root / "c.index"], root / "q.npy", k=k, batch_size=3, tag="t")
        assert got == brute_force_run(queries, qids, passages, docids, k, tag="t"), k


def test_flat_top_k_equals_faiss_index_flat_ip_across_blocks(monkeypatch):
    import faiss

    from hbt_tools import search

    monkeypatch.setattr(search, "FLAT_BLOCK_ROWS", 7)  # 50 candidates: 8 blocks, the last short
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((50, 8), dtype=np.float32)
    queries = rng.standard_normal((6, 8), dtype=np.float32)
    reference = faiss.IndexFlatIP(8)
    reference.add(vectors)
    for k in (1, 10, 50, 60):
        want_scores, want_rows = reference.search(queries, k)
        scores, rows = search.flat_top_k(vectors, queries, k)
        assert np.array_equal(rows, want_rows), k
        assert np.allclose(scores, want_scores, rtol=1e-5, atol=1e-6), k
    assert (rows[:, 50:] == -1).all()


def test_ties_survive_block_boundaries(tied, monkeypatch):
    from hbt_tools import search

    monkeypatch.setattr(search, "FLAT_BLOCK_ROWS", 5)
    root, passages, queries = tied
    docids = [f"d{i}" for i in range(len(passages))]
    for k in (7, 64):
        got = run_text([root / "c.index"], root / "q.npy", k=k, tag="t")
        want = brute_force_run(queries, [f"q{i}" for i in range(40)], passages, docids, k,
                               tag="t")
        assert got == want, k


def test_k_beyond_the_corpus_lists_every_passage(tmp_path):
    passages = tied_vectors(12)
    write_embeddings(tmp_path / "c.npy", passages)
    write_embeddings(tmp_path / "q.npy", tied_vectors(2, seed=5), ["a", "b"])
    index_embeddings(tmp_path / "c.npy", tmp_path / "c.index", progress=False)
    got = run_text([tmp_path / "c.index"], tmp_path / "q.npy", k=50)
    assert got == brute_force_run(tied_vectors(2, seed=5), ["a", "b"], passages,
                                  [f"d{i}" for i in range(12)], 50)
    assert len(got.splitlines()) == 24


def test_float16_embeddings_search_like_float32(tied, tmp_path):
    root, passages, queries = tied  # multiples of 1/8: exact in float16 too
    write_embeddings(tmp_path / "c16.npy", passages.astype(np.float16))
    write_embeddings(tmp_path / "q16.npy", queries.astype(np.float16), [f"q{i}" for i in range(40)],
                     ["en"] * 40)
    r = run_cli("hbt-index", tmp_path / "c16.npy", "-o", tmp_path / "c16.index")
    assert r.returncode == 0, r.stderr.decode()
    assert run_text([tmp_path / "c16.index"], tmp_path / "q16.npy", k=20) == \
        run_text([root / "c.index"], root / "q.npy", k=20)


@pytest.mark.parametrize("lang", ["de", "fr,en"])
def test_lang_restriction_equals_brute_force_over_that_pool(tied, lang):
    root, passages, queries = tied
    docids = [f"d{i}" for i in range(len(passages))]
    langs = [LANGS[i % 3] for i in range(len(passages))]
    allowed = [l in lang.split(",") for l in langs]
    r = run_cli("hbt-search", "--index", root / "c.index", root / "q.npy", "-k", "25",
                "--lang", lang)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == brute_force_run(queries, [f"q{i}" for i in range(40)], passages,
                                                docids, 25, allowed=allowed)


def test_shards_merge_into_the_unsharded_run(tied, tmp_path):
    root, passages, _ = tied
    docids = np.array([f"d{i}" for i in range(len(passages))])
    langs = np.array([LANGS[i % 3] for i in range(len(passages))])
    shard_of = np.arange(len(passages)) % 2  # duplicates (rows 0, 300..319) land in both shards
    shards = []
    for shard in (0, 1):
        rows = shard_of == shard
        npy = write_embeddings(tmp_path / f"c.{shard}.npy", passages[rows], list(docids[rows]),
                               list(langs[rows]))
        index_embeddings(npy, tmp_path / f"c.{shard}.index", progress=False)
        shards.append(tmp_path / f"c.{shard}.index")
    for options in ({"k": 30}, {"k": 10, "langs": ["en"]}):
        assert run_text(shards, root / "q.npy", **options) == \
            run_text([root / "c.index"], root / "q.npy", **options)
    r = run_cli("hbt-search", "--index", shards[0], "--index", shards[0], root / "q.npy")
    assert r.returncode == 2 and b"duplicate id" in r.stderr


# ---------------------------------------------------------------- approximate indexes

@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    root = tmp_path_factory.mktemp("clustered")
    passages = clustered_vectors(4000)
    queries = clustered_vectors(100, seed=1)
    write_embeddings(root / "c.npy", passages)
    write_embeddings(root / "q.npy", queries, [f"q{i}" for i in range(100)], ["en"] * 100)
    exact = queries @ passages.T
    return root, passages, queries, exact


def top10_recall(run, exact, allowed=None):
    scores = np.where(allowed, exact, -np.inf) if allowed is not None else exact
    truth = np.argsort(-scores, axis=1)[:, :10]
    hits = [len({f"d{j}" for j in truth[i]} & set(list(run[f"q{i}"])[:10])) / 10
            for i in range(len(exact))]
    return float(np.mean(hits))


@pytest.mark.parametrize("index_type, options, min_recall", [
    ("hnsw", {"hnsw_m": 16, "ef_construction": 80}, 0.95),
    ("ivfpq", {"pq_m": 16, "nbits": 6, "nlist": 32, "train_size": 1500}, 0.6),
])
def test_approximate_indexes_find_the_exact_neighbours(clustered, tmp_path, index_type, options,
                                                       min_recall):
    root, passages, _, exact = clustered
    meta = index_embeddings(root / "c.npy", tmp_path / "idx",
                            IndexSettings(type=index_type, **options), progress=False)
    assert meta["type"] == index_type and meta["count"] == 4000
    run_path = tmp_path / "run"
    search_to_run([str(tmp_path / "idx")], str(root / "q.npy"), str(run_path), k=10,
                  progress=False)
    assert top10_recall(read_run(run_path), exact) >= min_recall
    # A language pool goes through faiss' ID selector: every hit is in the pool.
    search_to_run([str(tmp_path / "idx")], str(root / "q.npy"), str(run_path), k=10,
                  langs=["fr"], progress=False)
    run = read_run(run_path)
    fr = np.arange(len(passages)) % 3 == 2
    assert all(int(d[1:]) % 3 == 2 for hits in run.values() for d in hits)
    assert top10_recall(run, exact, allowed=fr) >= min_recall - 0.1


# ---------------------------------------------------------------- files and pipes

def test_index_layout_and_run_format(tied, tmp_path):
    root = tied[0]
    index = load_index(str(root / "c.index"))
    assert sorted(os.listdir(root / "c.index")) == ["ids.jsonl", "index.faiss", "meta.json"]
    assert index.meta["type"] == "flat" and index.meta["metric"] == "inner_product"
    assert index.meta["dim"] == 16 and index.meta["count"] == 600
    assert index.meta["langs"] == {"de": 200, "en": 200, "fr": 200}
    assert index.ids[:3] == ["d0", "d1", "d2"] and index.langs[:3] == LANGS

    r = run_cli("hbt-search", "--index", root / "c.index", root / "q.npy", "-k", "9",
                "--tag", "exp1", "-o", tmp_path / "run.trec")
    assert r.returncode == 0 and r.stdout == b"", r.stderr.decode()
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert len(lines) == 40 * 9
    rows = [line.split(" ") for line in lines]
    assert all(len(row) == 6 and row[1] == "Q0" and row[5] == "exp1" for row in rows)
    assert [row[0] for row in rows[::9]] == [f"q{i}" for i in range(40)]
    assert all(row[3] == str(i % 9 + 1) for i, row in enumerate(rows))
    for q in range(40):
        hits = rows[q * 9:(q + 1) * 9]
        keys = [(float(row[4]), row[2]) for row in hits]
        assert keys == sorted(keys, reverse=True)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []


def test_head_closes_the_pipe_quietly(tied):
    root = tied[0]
    command = (f"{sys.executable} {ROOT}/bin/hbt-search --index {root / 'c.index'} "
               f"{root / 'q.npy'} -k 600 | head -n 2; echo \"status=${{PIPESTATUS[0]}}\"")
    r = subprocess.run(["bash", "-c", command], capture_output=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    out = r.stdout.decode().splitlines()
    assert len(out) == 3 and out[0].startswith("q0 Q0 ") and out[2] == "status=0", out
    assert r.stderr == b""


def _kill_when_writing_starts(args, parent, name):
    """Start hbt-index, SIGKILL it as soon as its temporary index directory appears."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "hbt-index"), *args],
                            env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(f.startswith(f".{name}.tmp") for f in os.listdir(parent)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    return proc


def test_kill_9_while_writing_leaves_no_half_index(tmp_path):
    big = np.random.default_rng(0).standard_normal((200_000, 32), dtype=np.float32)
    npy = write_embeddings(tmp_path / "big.npy", big)
    final = tmp_path / "big.index"

    proc = _kill_when_writing_starts([npy, "-o", final], tmp_path, "big.index")
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert not final.exists()

    # Over an existing index, a kill leaves the old index complete.
    small = write_embeddings(tmp_path / "small.npy", tied_vectors(5))
    assert run_cli("hbt-index", small, "-o", final).returncode == 0
    proc = _kill_when_writing_starts([npy, "-o", final], tmp_path, "big.index")
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert load_index(str(final)).meta["count"] == 5

    # Leftover temporary directories are hidden and do not disturb the next build.
    r = run_cli("hbt-index", npy, "-o", final)
    assert r.returncode == 0, r.stderr.decode()
    assert load_index(str(final)).meta["count"] == 200_000
    visible = [f for f in os.listdir(tmp_path) if not f.startswith(".")]
    assert sorted(visible) == ["big.ids.jsonl", "big.index", "big.npy", "small.ids.jsonl",
                               "small.npy"]


def test_run_tags_and_ids_are_single_trec_words():
    """NUL cannot come through argv, but the Python API takes any string."""
    assert is_trec_word("run-1") and is_trec_word("ドキュメント#3")
    assert not any(map(is_trec_word, ["", "a b", "a\tb", "a\u00a0b", "a\x00b"]))
    for bad in ("", "a b", "a\x00b"):
        with pytest.raises(InputError, match="one word"):
            check_tag(bad)


def stderr_on_a_terminal(command: list[str]) -> str:
    """What ``command`` writes to stderr when stderr is a terminal (where bars are drawn)."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    # 24 x 80: a new pseudo-terminal is 0 columns wide, where tqdm draws an empty bar
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=follower, env=dict(os.environ, PYTHONPATH=ROOT)) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait() == 0, b"".join(chunks)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pseudo-terminal")
def test_quiet_draws_no_progress_bar_on_a_terminal(tied, tmp_path):
    root = tied[0]
    index = [sys.executable, os.path.join(ROOT, "bin", "hbt-index"), str(root / "c.npy"), "-o",
             str(tmp_path / "idx")]
    search = [sys.executable, os.path.join(ROOT, "bin", "hbt-search"), str(root / "q.npy"),
              "--index", str(root / "c.index"), "-o", str(tmp_path / "run.trec")]
    for command in (index, search):
        assert "%|" in stderr_on_a_terminal(command)  # tqdm's bar
        assert "%|" not in stderr_on_a_terminal([*command, "--quiet"])
