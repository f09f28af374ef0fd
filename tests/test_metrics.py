"""Metrics and the TREC run reader: hand-computed values, properties, pytrec_eval parity."""
import os
import random
import tempfile

import numpy as np
import pytest
import pytrec_eval
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbt_tools.evaluation.trec_eval import evaluate_run
from hbt_tools.io import InputError
from hbt_tools.metrics import RankedHits, parse_metric, parse_metrics, rank_distance
from hbt_tools.trec import read_run, read_run_columns

ALL = ["map", "map@3", "ndcg", "ndcg@1", "ndcg@3", "recall@1", "recall@4", "p@1", "p@5", "mrr",
       "mrr@2", "r-prec"]
PYTREC = {"map": "map", "map@3": "map_cut_3", "ndcg": "ndcg", "ndcg@1": "ndcg_cut_1",
          "ndcg@3": "ndcg_cut_3", "recall@1": "recall_1", "recall@4": "recall_4", "p@1": "P_1",
          "p@5": "P_5", "mrr": "recip_rank", "r-prec": "Rprec"}
MEASURES = {"map", "map_cut.3", "ndcg", "ndcg_cut.1,3", "recall.1,4", "P.1,5", "recip_rank",
            "Rprec"}


def write_run(lines, directory):
    path = os.path.join(directory, "run.trec")
    with open(path, "w") as f:
        for qid, docid, score in lines:
            f.write(f"{qid} Q0 {docid} 0 {score!r} tag\n")
    return path


def score(lines, qrels, metrics=ALL):
    with tempfile.TemporaryDirectory() as d:
        result = evaluate_run(read_run_columns(write_run(lines, d)), qrels,
                              parse_metrics(metrics))
    return {qid: {m: float(v[i]) for m, v in result.per_query.items()}
            for i, qid in enumerate(result.query_ids)}


# ---------------------------------------------------------------- hand-computed

def test_hand_computed_values():
    # ranking by score desc: d3 (rel 2), d1 (0), d2 (rel 1), d4 (unjudged); d5 (rel 1) missed
    qrels = {"q": {"d1": 0, "d2": 1, "d3": 2, "d5": 1}}
    run = [("q", "d1", 0.8), ("q", "d2", 0.5), ("q", "d3", 0.9), ("q", "d4", 0.1)]
    got = score(run, qrels)["q"]
    assert got["map"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert got["map@3"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert got["mrr"] == 1.0
    assert got["p@1"] == 1.0 and got["p@5"] == pytest.approx(2 / 5)
    assert got["recall@1"] == pytest.approx(1 / 3) and got["recall@4"] == pytest.approx(2 / 3)
    assert got["r-prec"] == pytest.approx(2 / 3)          # top 3: d3, d1, d2
    dcg = 2 / np.log2(2) + 1 / np.log2(4)
    idcg = 2 / np.log2(2) + 1 / np.log2(3) + 1 / np.log2(4)
    assert got["ndcg"] == pytest.approx(dcg / idcg)
    assert got["ndcg@1"] == 1.0
    assert got["ndcg@3"] == pytest.approx(dcg / idcg)


def test_ties_break_by_docid_descending():
    qrels = {"q": {"a": 1}}
    # all tied: trec_eval order is c, b, a -> the relevant 'a' is third
    got = score([("q", "a", 1.0), ("q", "b", 1.0), ("q", "c", 1.0)], qrels)["q"]
    assert got["mrr"] == pytest.approx(1 / 3)
    # scores equal as 32-bit floats tie too (trec_eval keeps scores as C floats)
    got = score([("q", "a", 1.00000002), ("q", "b", 1.00000001)], qrels)["q"]
    assert got["mrr"] == pytest.approx(1 / 2)
    # beyond float32's range both become inf: tied again
    got = score([("q", "a", 2e39), ("q", "b", 1e39), ("q", "c", 1.0)], qrels)["q"]
    assert got["mrr"] == pytest.approx(1 / 2)


def test_query_averaging_follows_trec_eval():
    qrels = {"judged-zero": {"x": 0}, "only-in-qrels": {"y": 1}, "normal": {"z": 1}}
    run = [("judged-zero", "x", 1.0), ("normal", "z", 1.0), ("only-in-run", "k", 1.0)]
    got = score(run, qrels, ["map"])
    assert list(got) == ["judged-zero", "normal"]      # in both; rel-0-only queries count as 0
    assert got["judged-zero"]["map"] == 0.0 and got["normal"]["map"] == 1.0


def test_negative_grades_give_no_gain():
    got = score([("q", "bad", 2.0), ("q", "good", 1.0)], {"q": {"bad": -1, "good": 1}})["q"]
    assert got["ndcg"] == pytest.approx(1 / np.log2(3))
    assert got["map"] == pytest.approx(1 / 2)
    got = score([("q", "bad", 2.0)], {"q": {"bad": -1}})["q"]
    assert got == {m: 0.0 for m in ALL}


def test_rank_distance_of_hits():
    hits = RankedHits.build(3, [0, 0, 0, 1], [7, 2, 4, 5], [1, 1, 1, 1], [0, 0, 0, 1, 2],
                            [1, 1, 1, 1, 1])
    assert rank_distance(hits).tolist() == [5, 0, 0]


@pytest.mark.parametrize("label,name,k", [("NDCG@10", "ndcg", 10), ("ndcg_cut.5", "ndcg", 5),
                                          ("P.10", "p", 10), ("recip_rank", "mrr", None),
                                          ("Rprec", "r-prec", None), ("map_cut_100", "map", 100),
                                          ("recall@100", "recall", 100)])
def test_metric_names(label, name, k):
    metric = parse_metric(label)
    assert (metric.label, metric.name, metric.k) == (label, name, k)


@pytest.mark.parametrize("label", ["foo", "recall", "p", "r-prec@3", "ndcg@0", "bpref"])
def test_bad_metric_names(label):
    with pytest.raises(InputError):
        parse_metric(label)


def test_short_relevant_ids_in_a_run_with_longer_ids():
    """MIRACL te: every relevant docid fits in 8 bytes, the run also has longer ones (the
    hashes once depended on the widest id of each file, and every hit was missed)."""
    qrels = {"1007": {"786#0": 1, "786#8": 0}, "35": {"34672#2": 1}}
    lines = [("1007", "786#0", 0.9), ("1007", "128919#0", 0.8), ("1007", "1234567890", 0.7),
             ("35", "128919#1", 0.6), ("35", "34672#2", 0.5)]
    got = score(lines, qrels, ["ndcg@10", "recall@100"])
    assert got == {"1007": {"ndcg@10": 1.0, "recall@100": 1.0},
                   "35": {"ndcg@10": pytest.approx(1 / np.log2(3)), "recall@100": 1.0}}


# ---------------------------------------------------------------- pytrec_eval parity

# ids of 1 to 20 bytes: a run's and the qrels' widest ids set different hash row widths
docids = st.sampled_from([f"d{i}" for i in range(12)] + ["D1", "é", "z9", "a_b", "1234567#",
                                                         "12345678#0", "786#0", "é" * 10])
qids = st.sampled_from(["q1", "q2", "q3", "q4", "10", "9"])
# scores beyond float32's range are checked by hand above (they become inf, as in trec_eval)
scores = st.one_of(st.sampled_from([0.0, -0.0, 1.0, 0.5, -2.0, 1e-9, 1.00000001, 1.00000002]),
                   st.floats(-10, 10, allow_nan=False, allow_infinity=False))
runs = st.dictionaries(qids, st.dictionaries(docids, scores, min_size=1, max_size=10),
                       min_size=1, max_size=5)
# A query whose judgments are all negative can make pytrec_eval (trec_eval's ndcg) hang now and
# then, so each query here has at least one judgment >= 0; hbt-score handles it (see above).
judgments = st.dictionaries(docids, st.integers(-1, 3), min_size=1, max_size=8).filter(
    lambda grades: max(grades.values()) >= 0)
qrels_st = st.dictionaries(qids, judgments, min_size=1, max_size=5)


def as_lines(run, rng):
    lines = [(q, d, s) for q, docs in run.items() for d, s in docs.items()]
    rng.shuffle(lines)
    return lines


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=runs, qrels=qrels_st, seed=st.integers(0, 1000))
def test_equals_pytrec_eval(run, qrels, seed):
    got = score(as_lines(run, random.Random(seed)), qrels)
    expected = pytrec_eval.RelevanceEvaluator(qrels, MEASURES).evaluate(run)
    assert set(got) == set(expected)
    for qid, values in expected.items():
        for ours, theirs in PYTREC.items():
            assert got[qid][ours] == pytest.approx(values[theirs], abs=1e-9), (qid, ours)
    # mrr@2 = recip_rank of the run cut to its top 2 (trec_eval order, float32 scores)
    top2 = {q: dict(sorted(docs.items(), key=lambda kv: (np.float32(kv[1]), kv[0]),
                           reverse=True)[:2]) for q, docs in run.items()}
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top2)
    for qid, values in cut.items():
        assert got[qid]["mrr@2"] == pytest.approx(values["recip_rank"], abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(run=runs, qrels=qrels_st, seed=st.integers(0, 1000))
def test_bounds_and_line_order_invariance(run, qrels, seed):
    first = score(as_lines(run, random.Random(seed)), qrels)
    second = score(as_lines(run, random.Random(seed + 1)), qrels)
    assert first == second
    for values in first.values():
        for m in ("map", "ndcg", "ndcg@3", "recall@4", "mrr", "p@5", "r-prec"):
            assert 0.0 <= values[m] <= 1.0 + 1e-12


# ---------------------------------------------------------------- run reader

@settings(max_examples=60, deadline=None)
@given(run=runs, seed=st.integers(0, 1000), three=st.booleans(), crlf=st.booleans())
def test_run_reader_matches_a_naive_parse(run, seed, three, crlf):
    lines = as_lines(run, random.Random(seed))
    end = "\r\n" if crlf else "\n"
    text = "".join((f"{q}\t{d} {s!r}" if three else f"{q} Q0 {d} 1 {s!r} t") + end
                   for q, d, s in lines)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "r")
        with open(path, "w", newline="") as f:
            f.write("\n" + text)
        assert read_run(path) == run
        columns = read_run_columns(path)
    assert columns.line_numbers.tolist() == list(range(2, len(lines) + 2))


@pytest.mark.parametrize("text,message,line", [
    ("q Q0 d 1 1.0 t\nq Q0 e 2 t\n", "expected 6 columns", 2),
    ("q Q0 d 1 1.0 t\nq Q0 e 2 high t\n", "field 'score'", 2),
    ("q Q0 d 1 nan t\n", "NaN", 1),
    ("q Q0 d 1 1 t\nq2 Q0 d 1 1 t\nq Q0 d 2 0.5 t\n", "listed twice", 3),
    ("q Q0 d 1 1 t\n\xff\n", "UTF-8", 2),
    ("\n\n", "empty run", None),
])
def test_run_reader_errors(tmp_path, text, message, line):
    path = tmp_path / "run"
    path.write_bytes(text.encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
    with pytest.raises(InputError) as e:
        read_run_columns(path)
    assert message in str(e.value)
    assert e.value.line == line
