"""Property tests of the shared readers (JSONL, TREC runs and qrels) and of rank distance.

The metrics' own properties (values in [0, 1], run-line order, trec_eval's ties) are checked
against pytrec_eval in test_metrics.py.
"""
import os
import random
import tempfile

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbt_tools.evaluation.lareqa import evaluate_lareqa
from hbt_tools.io import InputError, iter_jsonl
from hbt_tools.trec import read_qrels, read_run

# JSON values orjson writes and reads back unchanged: no lone surrogates, 64-bit integers.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12)
json_objects = st.dictionaries(text, json_values, max_size=5)
blank_lines = st.sampled_from(["", " ", "\t", "  \t "])


def write_bytes(directory, name, data: bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


@settings(max_examples=150, deadline=None)
@given(objects=st.lists(json_objects, min_size=1, max_size=8),
       blanks=st.lists(st.lists(blank_lines, max_size=2), min_size=9, max_size=9),
       crlf=st.booleans())
def test_jsonl_round_trip_skips_blank_lines_and_numbers_lines(objects, blanks, crlf):
    end = b"\r\n" if crlf else b"\n"
    lines, expected = [], []
    for obj, before in zip(objects, blanks):
        lines += [blank.encode() for blank in before]
        lines.append(orjson.dumps(obj))
        expected.append((len(lines), obj))
    lines += [blank.encode() for blank in blanks[-1]]
    with tempfile.TemporaryDirectory() as d:
        path = write_bytes(d, "rows.jsonl", end.join(lines) + end)
        assert list(iter_jsonl(path)) == expected


@settings(max_examples=100, deadline=None)
@given(objects=st.lists(json_objects, min_size=1, max_size=6), data=st.data(),
       bad=st.sampled_from([b"{", b'{"a": }', b"[1]", b'"text"', b"{\"a\": 1} x",
                            b'{"a": "\xff"}', b"\xef\xbb\xbf{}"]))
def test_jsonl_error_names_the_bad_line(objects, data, bad):
    lines = [orjson.dumps(obj) for obj in objects]
    position = data.draw(st.integers(0, len(lines)), label="position")
    lines.insert(position, bad)
    with tempfile.TemporaryDirectory() as d:
        path = write_bytes(d, "rows.jsonl", b"\n".join(lines) + b"\n")
        with pytest.raises(InputError) as error:
            list(iter_jsonl(path))
    assert error.value.line == position + 1
    assert f"rows.jsonl:{position + 1}: " in str(error.value)


# ---------------------------------------------------------------- TREC readers

token = st.text(st.sampled_from("abcxyz019_-.:#/é中"), min_size=1, max_size=6)
separators = st.lists(st.sampled_from([" ", "\t", "  ", " \t ", "\t\t"]), min_size=5, max_size=5)
scores = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.integers(-1000, 1000))
runs = st.dictionaries(token, st.dictionaries(token, scores, min_size=1, max_size=6),
                       min_size=1, max_size=4)


def run_line(qid, docid, score, three_columns, seps, rank=1):
    columns = [qid, docid, repr(score)] if three_columns else \
        [qid, "Q0", docid, str(rank), repr(score), "tag"]
    line = columns[0]
    for sep, column in zip(seps, columns[1:]):
        line += sep + column
    return line


@settings(max_examples=150, deadline=None)
@given(run=runs, seps=st.lists(separators, min_size=30, max_size=30),
       three=st.lists(st.booleans(), min_size=30, max_size=30), seed=st.integers(0, 10**6),
       padding=st.sampled_from(["", " ", "\t"]))
def test_run_reader_any_whitespace_any_line_order(run, seps, three, seed, padding):
    lines = [(q, d, s) for q, docs in run.items() for d, s in docs.items()]
    random.Random(seed).shuffle(lines)
    body = "".join(padding + run_line(q, d, s, three[i], seps[i], rank=i + 1) + padding + "\n"
                   for i, (q, d, s) in enumerate(lines))
    with tempfile.TemporaryDirectory() as d:
        got = read_run(write_bytes(d, "run", body.encode()))
    assert got == {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items()}


@settings(max_examples=100, deadline=None)
@given(qrels=st.dictionaries(token, st.dictionaries(token, st.integers(-1, 3), min_size=1,
                                                    max_size=5), min_size=1, max_size=4),
       seps=st.lists(separators, min_size=20, max_size=20), q0=st.booleans(),
       seed=st.integers(0, 10**6))
def test_qrels_reader_any_whitespace_any_line_order(qrels, seps, q0, seed):
    lines = [(q, d, g) for q, docs in qrels.items() for d, g in docs.items()]
    random.Random(seed).shuffle(lines)
    body = "".join(f"{q}{s[0]}{'Q0' if q0 else '0'}{s[1]}{d}{s[2]}{g}\n"
                   for (q, d, g), s in zip(lines, seps))
    with tempfile.TemporaryDirectory() as d:
        assert read_qrels(write_bytes(d, "qrels", body.encode())) == qrels


# ---------------------------------------------------------------- rank distance

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_langs=st.integers(1, 4), n_groups=st.integers(1, 6), distractors=st.integers(0, 8),
       dim=st.integers(1, 4), seed=st.integers(0, 10**6), data=st.data())
def test_rank_distance_is_at_least_relevant_minus_one(n_langs, n_groups, distractors, dim, seed,
                                                      data):
    """In the multi ranking a query's relevant candidates hold distinct ranks, so their spread
    is at least (number relevant − 1); small integer vectors make many scores tie."""
    rng = np.random.default_rng(seed)
    langs = [f"l{i}" for i in range(n_langs)]
    present = [data.draw(st.lists(st.sampled_from(langs), min_size=1, unique=True))
               for _ in range(n_groups)]
    corpus_rows = [{"id": f"g{g}-{lang}", "lang": lang} for g in range(n_groups)
                   for lang in present[g]]
    corpus_rows += [{"id": f"x{i}", "lang": langs[i % n_langs]} for i in range(distractors)]
    query_rows, qrels = [], {}
    for g in range(n_groups):
        for lang in present[g]:
            query_rows.append({"id": f"q{g}-{lang}", "lang": lang})
            qrels[f"q{g}-{lang}"] = {f"g{g}-{other}": 1 for other in present[g]}
    queries = rng.integers(-1, 2, size=(len(query_rows), dim)).astype(np.float32)
    corpus = rng.integers(-1, 2, size=(len(corpus_rows), dim)).astype(np.float32)
    scores = evaluate_lareqa(queries, query_rows, corpus, corpus_rows, qrels)
    assert len(scores.query_ids) == len(query_rows)
    for qid, distance in zip(scores.query_ids, scores.rank_distance.tolist()):
        assert distance >= len(qrels[qid]) - 1, (qid, distance)
        assert distance <= len(corpus_rows) - 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=40),
       st.integers(0, 2**32 - 1))
def test_vectorised_score_formatting_is_printf(values, seed):
    """hbt-search's run scores equal Python's (= printf's) ``%.6f`` of the float32 score,
    including halves at the 7th decimal, -0.000000, and scores of any magnitude."""
    from hbt_tools.search import score_byte_matrix

    rng = np.random.default_rng(seed)
    # odd m / 128 (e.g. 0.0078125) is exactly halfway between two 6-decimal numbers
    halves = (2 * rng.integers(-50_000, 50_000, 20) + 1) / 128
    scores = np.array(values + halves.tolist() + [0.0, -0.0, -1e-9, 0.0078125, 0.0234375],
                      dtype=np.float32)
    assert f"{np.float32(0.0078125):.6f}" == "0.007812"  # half to even: a real tie case
    printed = [row[row != 0].tobytes() for row in score_byte_matrix(scores)]
    assert printed == [f"{s:.6f}".encode() for s in scores.tolist()]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 120), st.booleans())
def test_run_block_equals_lines_written_one_by_one(seed, queries, k, docid_matrix):
    """format_run_block (one byte matrix, NULs dropped) against f-strings line by line: ids of
    mixed widths and scripts, missing hits (label -1), ranks of several digits, scores of any
    sign and width."""
    from hbt_tools.search import docid_table, format_run_block

    rng = np.random.default_rng(seed)
    words = ["d", "doc-7#3", "ドキュメント", "x" * 40, "αβγ", "12345678901234"]
    docids = np.array([f"{words[i % len(words)]}{i}" for i in range(300)], dtype=object)
    qids = [f"{words[(i * 5) % len(words)]}q{i}" for i in range(queries)]
    labels = rng.integers(0, len(docids), (queries, k))
    labels[rng.random((queries, k)) < 0.2] = -1
    scale = 10.0 ** rng.integers(-3, 8, (queries, k))
    scores = (rng.standard_normal((queries, k)) * scale).astype(np.float32)
    expected = "".join(
        f"{qids[q]} Q0 {docids[labels[q, r]]} {r + 1} {scores[q, r]:.6f} tag\n"
        for q in range(queries) for r in range(k) if labels[q, r] >= 0).encode()
    # docids as one byte matrix, or (many long ids) as bytes objects converted per batch
    table = docid_table(docids, max_matrix_bytes=2**20 if docid_matrix else 0)
    assert table.dtype == (np.uint8 if docid_matrix else object)
    assert format_run_block(qids, scores, labels, table, "tag") == expected
