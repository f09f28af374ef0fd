"""hbt-score command line: JSON structures, tables, comparisons and bad input."""
import json

import numpy as np

from cli_contract import CommandContract, jsonl_cases, npy_cases, qrels_cases, run_cases
from conftest import run_cli
from hbt_tools.io import save_embeddings

QRELS = "q1 0 a 1\nq1 0 c 2\nq1 0 z 0\nq2 0 x 1\nq3 0 y 1\n"
RUN_A = "q1 Q0 a 1 2.0 A\nq1 Q0 b 2 1.0 A\nq2 Q0 x 1 1 A\n"
RUN_B = "q1 Q0 c 1 2.0 B\nq1 Q0 a 2 1.0 B\nq2 Q0 y 1 1 B\n"


def files(tmp_path):
    for name, text in (("qrels.trec", QRELS), ("a.trec", RUN_A), ("b.trec", RUN_B)):
        (tmp_path / name).write_text(text)
    (tmp_path / "queries.jsonl").write_text('{"id": "q1", "lang": "de"}\n'
                                            '{"id": "q2", "lang": "en"}\n')
    return str(tmp_path / "qrels.trec"), str(tmp_path / "a.trec"), str(tmp_path / "b.trec")


def score_json(*args):
    r = run_cli("hbt-score", *args)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def toy_embeddings(tmp_path, name="sys", corpus_rows=None, nan=False):
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    corpus = np.array([[1, 0], [0, 1], [1, 0.5]], dtype=np.float32)
    if nan:
        corpus[1, 1] = np.nan
    save_embeddings(tmp_path / f"{name}-q.npy", queries,
                    [{"id": "q1", "lang": "en"}, {"id": "q2", "lang": "de"}])
    save_embeddings(tmp_path / f"{name}-c.npy", corpus, corpus_rows or
                    [{"id": "en1", "lang": "en"}, {"id": "de1", "lang": "de"},
                     {"id": "en2", "lang": "en"}])
    (tmp_path / "lq.trec").write_text("q1 0 en1 1\nq1 0 de1 1\nq2 0 de1 1\nq2 0 en1 1\n")
    return str(tmp_path / f"{name}-q.npy"), str(tmp_path / f"{name}-c.npy")


class TestScoreContract(CommandContract):
    command = "hbt-score"

    def valid_args(self, tmp_path):
        qrels, a, _ = files(tmp_path)
        return ["--qrels", qrels, a, "-o", str(tmp_path / "out.json")]

    def missing_file_args(self, tmp_path, missing):
        qrels, _, _ = files(tmp_path)
        return ["--qrels", qrels, "{MISSING}"]

    def bad_inputs(self, tmp_path):
        qrels, a, b = files(tmp_path)
        out = str(tmp_path / "out.json")

        def write(name, text):
            (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
            return str(tmp_path / name)

        yield from run_cases(tmp_path, "run", lambda run: ["--qrels", qrels, run, "-o", out])
        yield from qrels_cases(tmp_path, "qrels", lambda path: ["--qrels", path, a, "-o", out])
        yield from jsonl_cases(tmp_path, "by-lang", [{"id": "q1", "lang": "de"},
                                                     {"id": "q2", "lang": "en"}],
                               lambda path: ["--qrels", qrels, "--by-lang", path, a, "-o", out],
                               required=("lang",), id_field="id", lang_field=("lang",))
        yield ("unknown metric", ["--qrels", qrels, "-m", "bleu", a, "-o", out], None,
               "unknown metric 'bleu'")
        yield ("by-lang: query missing", ["--qrels", qrels, "--by-lang",
                                          write("ql.jsonl", '{"id": "q1", "lang": "de"}\n'),
                                          a, "-o", out], None, "'q2'")
        yield ("compare: three runs", ["--qrels", qrels, "--compare", a, b, qrels, "-o", out],
               None, "exactly two")
        q, c = toy_embeddings(tmp_path, "dim")
        np.save(tmp_path / "dim-c.npy", np.ones((3, 3), dtype=np.float32))
        lq = str(tmp_path / "lq.trec")
        yield ("lareqa: dimension mismatch", ["--protocol", "lareqa", "--qrels", lq,
                                              "--queries", q, "--corpus", c, "-o", out],
               None, "dimension")
        valid_queries, _ = toy_embeddings(tmp_path, "ok")  # queries load as the corpus does
        yield from npy_cases(tmp_path, "lareqa-corpus",
                             lambda npy: ["--protocol", "lareqa", "--qrels", lq, "--queries",
                                          valid_queries, "--corpus", npy, "-o", out], dim=2)
        yield ("lareqa: run files given", ["--protocol", "lareqa", "--qrels", lq, "--queries", q,
                                           "--corpus", c, a, "-o", out], None, "no RUN")


def test_one_run_json(tmp_path):
    qrels, a, _ = files(tmp_path)
    out = score_json("--qrels", qrels, "-m", "MAP", "-m", "ndcg@10,P.1", a, "--per-query",
                     "--by-lang", str(tmp_path / "queries.jsonl"))
    # q1: a (rel 1) at rank 1, c (rel 2) not retrieved; q2: x at rank 1; q3 not in the run
    assert out["run"] == a and out["queries"] == 2
    assert list(out["metrics"]) == ["MAP", "ndcg@10", "P.1"]
    assert out["metrics"]["MAP"] == (1 / 2 + 1) / 2
    idcg = 2 + 1 / np.log2(3)
    assert out["per_query"]["q1"]["ndcg@10"] == 1 / idcg
    assert out["by_lang"] == {"de": {"queries": 1, "metrics": out["per_query"]["q1"]},
                              "en": {"queries": 1, "metrics": out["per_query"]["q2"]}}


def test_conflicting_judgements_warn_and_the_last_counts(tmp_path):
    qrels, a, _ = files(tmp_path)
    (tmp_path / "twice.trec").write_text(QRELS + "q1 0 a 0\nq2 0 x 1\nq1 0 a 0\n")
    r = run_cli("hbt-score", "--qrels", str(tmp_path / "twice.trec"), "-m", "MAP", a)
    assert r.returncode == 0, r.stderr.decode()
    # line 6 re-judges (q1, a) 1 -> 0; line 7 repeats q2's grade (no conflict); line 8 is a
    # second 0 after the first 0 (no conflict either)
    assert (f"{tmp_path / 'twice.trec'}:6: q1 a judged again, relevance 0 (was 1); the last "
            "judgement counts (1 such line)") in r.stderr.decode()
    # q1's only relevant documents left: c (not retrieved) -> AP 0; q2: AP 1
    assert json.loads(r.stdout)["metrics"]["MAP"] == 0.5
    assert "judged again" not in run_cli("hbt-score", "--qrels", qrels, a).stderr.decode()


def test_several_runs_and_table(tmp_path):
    qrels, a, b = files(tmp_path)
    out = score_json("--qrels", qrels, "-m", "mrr", a, b)
    assert out == {"runs": {a: {"queries": 2, "metrics": {"mrr": 1.0}},
                            b: {"queries": 2, "metrics": {"mrr": 0.5}}}}
    r = run_cli("hbt-score", "--qrels", qrels, "-m", "mrr", "--format", "table", a, b)
    lines = r.stdout.decode().splitlines()
    assert any(line.split() == [a, "2", "1.0000"] for line in lines), lines
    assert any(line.split() == [b, "2", "0.5000"] for line in lines), lines


def test_compare_runs(tmp_path):
    qrels, a, b = files(tmp_path)
    out = score_json("--qrels", qrels, "--compare", a, b, "-m", "map", "--permutations", "999")
    # per-query differences B - A: q1 1.0 - 0.5, q2 0 - 1: every sign flip gives |mean| >= 0.25
    assert out["metrics"]["map"] == {"a": 0.75, "b": 0.5, "difference": -0.25, "p_value": 1.0}
    assert out["permutations"] == 999 and out["queries"] == 2


def test_lareqa_protocol_cli(tmp_path):
    q, c = toy_embeddings(tmp_path)
    out = score_json("--protocol", "lareqa", "--qrels", str(tmp_path / "lq.trec"),
                     "--queries", q, "--corpus", c)
    # q1 (en): en pool en2 (1.0) ties en1 (1.0) -> en2 first: AP 1/2; de pool: de1 alone
    # q2 (de): de pool de1 first; en pool: en2 (0.5) > en1 (0)
    assert out["matrix"] == {"en": {"en": 0.5, "de": 1.0}, "de": {"de": 1.0, "en": 0.5}}
    assert set(out) >= {"mono", "cross", "multi", "rank_distance", "per_language", "matrix"}
    r = run_cli("hbt-score", "--protocol", "lareqa", "--qrels", str(tmp_path / "lq.trec"),
                "--queries", q, "--corpus", c, "--format", "table")
    assert r.returncode == 0 and b"Mo mAP" in r.stdout and b"Per query language" in r.stdout
    q2, c2 = toy_embeddings(tmp_path, "other")
    out = score_json("--protocol", "lareqa", "--compare", "--qrels", str(tmp_path / "lq.trec"),
                     "--queries", q, "--corpus", c, "--queries", q2, "--corpus", c2)
    assert out["mono"]["map"]["difference"] == 0 and out["mono"]["map"]["p_value"] == 1.0
    assert out["matrix"]["en"]["de"]["a"] == 1.0
    pooled = score_json("--protocol", "lareqa", "--compare", "--qrels", str(tmp_path / "lq.trec"),
                        *("--queries", q, "--corpus", c, "--queries", q2, "--corpus", c2) * 2)
    assert pooled["pairs"] == 2 and pooled["compare"]["b"] == [{"queries": q2, "corpus": c2}] * 2
    assert pooled["matrix"] == out["matrix"]   # the same couple twice: the same means
    r = run_cli("hbt-score", "--protocol", "lareqa", "--compare", "--qrels",
                str(tmp_path / "lq.trec"), *("--queries", q, "--corpus", c) * 3)
    assert r.returncode != 0 and b"A, B, A, B" in r.stderr


def test_lareqa_heatmap_picture(tmp_path):
    q, c = toy_embeddings(tmp_path)
    picture = tmp_path / "matrix.png"
    r = run_cli("hbt-score", "--protocol", "lareqa", "--qrels", str(tmp_path / "lq.trec"),
                "--queries", q, "--corpus", c, "--heatmap", picture, "-o", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr.decode()
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run_cli("hbt-score", "--qrels", str(tmp_path / "lq.trec"), "--heatmap", picture,
                str(tmp_path / "lq.trec"))
    assert r.returncode == 2 and b"--heatmap" in r.stderr
