"""TREC qrels and run files: readers with file:line errors, and a run writer.

qrels: ``qid ITER docid rel`` (whitespace or tabs; MIRACL's ``Q0`` accepted). Only rel >= 1 is
relevant, but rel-0 rows are kept (they matter for nothing but trec_eval's judged counts).
runs:  ``qid Q0 docid rank score tag``; 3-column ``qid docid score`` is accepted when reading.
A run may not list one docid twice for one query (trec_eval refuses such runs too).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import IO, Iterable, Sequence

import numpy as np

from .io import InputError, open_input

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def read_qrels(path: str | os.PathLike) -> Qrels:
    tokens, counts, line_numbers = _tokenize(path, "qrels")
    bad = np.flatnonzero(counts != 4)
    if len(bad):
        raise InputError(f"expected 4 columns 'qid iter docid rel', got {counts[bad[0]]}",
                         path, int(line_numbers[bad[0]]))
    try:
        grades = list(map(int, tokens[3::4]))
    except ValueError:
        grades = [_grade(token, path, int(line)) for token, line
                  in zip(tokens[3::4], line_numbers.tolist())]
    qrels: Qrels = {}
    for qid, docid, grade in zip(tokens[0::4], tokens[2::4], grades):
        qrels.setdefault(qid.decode(), {})[docid.decode()] = grade
    return qrels


def _grade(token: bytes, path, line: int) -> int:
    try:
        return int(token)
    except ValueError:
        try:
            return int(float(token))
        except ValueError:
            raise InputError(f"relevance {token.decode()!r} is not a number", path, line,
                             "rel") from None


@dataclass
class RunColumns:
    """A run file as columns, one entry per non-blank line in file order.

    ``docids`` stay UTF-8 bytes: comparing them orders them exactly as trec_eval's ``strcmp``.
    """
    path: str
    query_ids: list[str]           # distinct qids, in order of first appearance
    query_index: np.ndarray        # per line: index into query_ids
    docids: list[bytes]            # per line
    scores: np.ndarray             # per line, float64 as written
    line_numbers: np.ndarray       # per line: its 1-based line number in the file


# bytes.split() separates on exactly these bytes; the column check below must agree with it.
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True


def read_run_columns(path: str | os.PathLike) -> RunColumns:
    """Read a run file (or stdin) into columns; vectorised so that 1M-line runs take ~1 s."""
    tokens, counts, line_numbers = _tokenize(path, "run")
    bad = np.flatnonzero((counts != 6) & (counts != 3))
    if len(bad):
        raise InputError(f"expected 6 columns 'qid Q0 docid rank score tag' (or 3: "
                         f"'qid docid score'), got {counts[bad[0]]}", path,
                         int(line_numbers[bad[0]]))
    if (counts == 6).all():
        qids, docids, score_tokens = tokens[0::6], tokens[2::6], tokens[4::6]
    else:
        table = np.array(tokens, dtype=object)
        first = np.concatenate(([0], np.cumsum(counts)[:-1]))
        six = counts == 6
        qids = table[first].tolist()
        docids = table[first + np.where(six, 2, 1)].tolist()
        score_tokens = table[first + np.where(six, 4, 2)].tolist()
    scores = _parse_scores(score_tokens, path, line_numbers)
    query_ids, query_index = _factorize(qids)
    _check_no_duplicates(query_index, docids, path, line_numbers)
    return RunColumns(os.fspath(path), query_ids, query_index, docids, scores, line_numbers)


def _tokenize(path, kind: str) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """All whitespace-separated tokens of a file, the number of tokens on each non-blank line
    and those lines' 1-based numbers; vectorised (no Python loop over lines)."""
    with open_input(path) as fh:
        data = fh.read()
    if not data.strip():
        raise InputError(f"empty {kind}", path)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not valid UTF-8 (byte {e.start})", path,
                         data.count(b"\n", 0, e.start) + 1) from None
    chars = np.frombuffer(data, dtype=np.uint8)
    space = _WHITESPACE[chars]
    token_starts = np.flatnonzero(~space[1:] & space[:-1]) + 1
    if not space[0]:
        token_starts = np.concatenate(([0], token_starts))
    newlines = np.flatnonzero(chars == ord("\n"))
    tokens_before_line_end = np.searchsorted(token_starts, np.append(newlines, len(chars)))
    columns = np.diff(tokens_before_line_end, prepend=0)
    lines = np.flatnonzero(columns)
    return data.split(), columns[lines], lines + 1


def _parse_scores(tokens: list[bytes], path, line_numbers: np.ndarray) -> np.ndarray:
    try:
        scores = np.fromiter(map(float, tokens), dtype=np.float64, count=len(tokens))
    except ValueError:
        for i, token in enumerate(tokens):
            try:
                float(token)
            except ValueError:
                raise InputError(f"score {token.decode()!r} is not a number", path,
                                 int(line_numbers[i]), "score") from None
        raise
    nan = np.flatnonzero(np.isnan(scores))
    if len(nan):
        raise InputError("score is NaN", path, int(line_numbers[nan[0]]), "score")
    return scores


def _factorize(qids: list[bytes]) -> tuple[list[str], np.ndarray]:
    """Distinct qids (first-appearance order) and each line's index; fast for grouped runs."""
    table = np.array(qids, dtype=object)
    starts = np.flatnonzero(np.concatenate(([True], table[1:] != table[:-1])))
    codes: dict[bytes, int] = {}
    segment_codes = np.fromiter((codes.setdefault(q, len(codes)) for q in table[starts]),
                                dtype=np.int64, count=len(starts))
    index = np.repeat(segment_codes, np.diff(np.append(starts, len(table))))
    return [q.decode() for q in codes], index


def _check_no_duplicates(query_index: np.ndarray, docids: list[bytes], path,
                         line_numbers: np.ndarray) -> None:
    hashes = np.fromiter(map(hash, docids), dtype=np.int64, count=len(docids)).view(np.uint64)
    keys = hashes ^ (query_index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    ordered = np.sort(keys)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):
        return
    suspects = np.flatnonzero(np.isin(keys, repeated))
    seen: dict[tuple[int, bytes], int] = {}
    for i in sorted(suspects.tolist()):
        key = (int(query_index[i]), docids[i])
        if key in seen:
            raise InputError(f"docid {docids[i].decode()!r} listed twice for one query "
                             f"(first on line {seen[key]})", path, int(line_numbers[i]), "docid")
        seen[key] = int(line_numbers[i])


def read_run(path: str | os.PathLike) -> Run:
    """A run as ``{qid: {docid: score}}`` (built on :func:`read_run_columns`)."""
    columns = read_run_columns(path)
    run: Run = {qid: {} for qid in columns.query_ids}
    for q, docid, score in zip(columns.query_index.tolist(), columns.docids,
                               columns.scores.tolist()):
        run[columns.query_ids[q]][docid.decode()] = score
    return run


def format_run_lines(qid: str, docids: Sequence[str], scores: Sequence[float],
                     tag: str = "hbt") -> str:
    """TREC run lines for one query; ``docids`` must already be in rank order."""
    return "".join(f"{qid} Q0 {d} {r} {s:.6f} {tag}\n"
                   for r, (d, s) in enumerate(zip(docids, scores), 1))


def write_run(fh: IO[bytes], run: Iterable[tuple[str, Sequence[str], Sequence[float]]],
              tag: str = "hbt") -> None:
    for qid, docids, scores in run:
        fh.write(format_run_lines(qid, docids, scores, tag).encode("utf-8"))
