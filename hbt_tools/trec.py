"""TREC qrels and run files: readers with file:line errors (runs are written by hbt_tools.search).

qrels: ``qid ITER docid rel`` (whitespace or tabs; MIRACL's ``Q0`` accepted). Only rel >= 1 is
relevant, but rel-0 rows are kept (they matter for nothing but trec_eval's judged counts). A
(qid, docid) judged twice with different grades keeps the last, with a warning.
runs:  ``qid Q0 docid rank score tag``; 3-column ``qid docid score`` is accepted when reading.
A run may not list one docid twice for one query (trec_eval refuses such runs too).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .io import InputError, display_name, open_input

_BAD_TREC_ID_CHAR = re.compile(r"[\s\x00]")  # NUL too: run lines are assembled around it
Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def is_trec_word(text: str) -> bool:
    """Whether ``text`` can be one field of a TREC run line: not empty, no whitespace (runs are
    whitespace-separated) and no NUL (C readers such as trec_eval take it as the line's end)."""
    return bool(text) and not _BAD_TREC_ID_CHAR.search(text)


def read_qrels(path: str | os.PathLike) -> Qrels:
    data = _read_text(path, "qrels")
    _, _, counts, line_numbers = _token_spans(data)
    tokens = data.split()
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
    conflicts = []  # (line, qid, docid, earlier grade, grade)
    for i, (qid, docid, grade) in enumerate(zip(tokens[0::4], tokens[2::4], grades)):
        judged = qrels.setdefault(qid.decode(), {})
        doc = docid.decode()
        if judged.get(doc, grade) != grade:
            conflicts.append((int(line_numbers[i]), qid.decode(), doc, judged[doc], grade))
        judged[doc] = grade
    if conflicts:
        line, qid, doc, earlier, grade = conflicts[0]
        print(f"hbt-tools: warning: {display_name(path)}:{line}: {qid} {doc} judged again, "
              f"relevance {grade} (was {earlier}); the last judgement counts "
              f"({len(conflicts)} such line{'s' if len(conflicts) > 1 else ''})", file=sys.stderr)
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


class ByteTokens(Sequence[bytes]):
    """One column of a file's tokens as spans of its bytes: no Python object per token until one
    is asked for; ``hashes`` gives every token's 64-bit hash at numpy speed."""

    def __init__(self, data: bytes, starts: np.ndarray, ends: np.ndarray,
                 chars: np.ndarray | None = None):
        self.data, self.starts, self.ends = data, starts, ends
        self._chars = chars      # data as _padded_chars gives it, when the caller has it
        self._hashes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> bytes:
        return self.data[self.starts[i]:self.ends[i]]

    def __iter__(self):
        data = self.data
        return (data[s:e] for s, e in zip(self.starts.tolist(), self.ends.tolist()))

    @property
    def hashes(self) -> np.ndarray:
        if self._hashes is None:
            lengths = self.ends - self.starts
            if self._chars is None:
                self._chars = _padded_chars(self.data, int(lengths.max(initial=0)))
            self._hashes = _hash_rows(_token_rows(self._chars, self.starts, lengths, words=True),
                                      lengths)
        return self._hashes


def may_be_in(values: np.ndarray, members: np.ndarray, bits: int = 22) -> np.ndarray:
    """True for every value (an unsigned integer hash) in ``members`` and, rarely, for others:
    a bitmap of the low bits, one pass over ``values``. Callers confirm each True exactly."""
    low_bits = values.dtype.type((1 << bits) - 1)
    bitmap = np.zeros(1 << bits, dtype=bool)
    bitmap[members & low_bits] = True
    return bitmap[values & low_bits]


def hash_byte_strings(strings: Sequence[bytes]) -> np.ndarray:
    """The hashes :attr:`ByteTokens.hashes` gives the same byte strings."""
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    ends = np.cumsum(lengths)
    return ByteTokens(b"".join(strings), ends - lengths, ends).hashes


@dataclass
class RunColumns:
    """A run file as columns, one entry per non-blank line in file order.

    ``docids`` give UTF-8 bytes: comparing them orders them exactly as trec_eval's ``strcmp``.
    """
    path: str
    query_ids: list[str]           # distinct qids, in order of first appearance
    query_index: np.ndarray        # per line: index into query_ids
    docids: ByteTokens             # per line
    scores: np.ndarray             # per line, float64 as written
    line_numbers: np.ndarray       # per line: its 1-based line number in the file


# bytes.split() separates on exactly these bytes; the column check below must agree with it.
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True


def read_run_columns(path: str | os.PathLike) -> RunColumns:
    """Read a run file (or stdin) into columns; vectorised (numpy over the file's bytes, no
    Python object per line), so that a 1M-line run takes a fraction of a second."""
    data = _read_text(path, "run")
    starts, ends, counts, line_numbers = _token_spans(data)
    bad = np.flatnonzero((counts != 6) & (counts != 3))
    if len(bad):
        raise InputError(f"expected 6 columns 'qid Q0 docid rank score tag' (or 3: "
                         f"'qid docid score'), got {counts[bad[0]]}", path,
                         int(line_numbers[bad[0]]))
    first = np.cumsum(counts) - counts
    six = counts == 6
    qid_token = first
    docid_token = first + np.where(six, 2, 1)
    score_token = first + np.where(six, 4, 2)
    chars = _padded_chars(data, int((ends - starts).max()))
    scores = _parse_scores(chars, data, starts[score_token], ends[score_token], path,
                           line_numbers)
    query_ids, query_index = _factorize(chars, data, starts[qid_token], ends[qid_token])
    docids = ByteTokens(data, starts[docid_token], ends[docid_token], chars)
    _check_no_duplicates(query_index, docids, path, line_numbers)
    return RunColumns(os.fspath(path), query_ids, query_index, docids, scores, line_numbers)


def _read_text(path, kind: str) -> bytes:
    """The file's bytes; InputError when it is empty or not UTF-8."""
    with open_input(path) as fh:
        data = fh.read()
    if not data or data.isspace():
        raise InputError(f"empty {kind}", path)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not valid UTF-8 (byte {e.start})", path,
                         data.count(b"\n", 0, e.start) + 1) from None
    return data


def _token_spans(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Start and end offsets of every whitespace-separated token, the number of tokens on each
    non-blank line and those lines' 1-based numbers; vectorised (no Python loop over lines)."""
    chars = np.frombuffer(data, dtype=np.uint8)
    space = np.ones(len(chars) + 2, dtype=bool)
    # b" \t\n\r\x0b\x0c", as bytes.split() (9-13 and 32)
    np.logical_or(chars == ord(" "), chars - np.uint8(9) <= np.uint8(4), out=space[1:-1])
    edges = np.flatnonzero(space[1:] != space[:-1])        # token start, end, start, end, ...
    newlines = np.flatnonzero(chars == ord("\n"))
    # a line end is whitespace, so every token begun before it has ended at or before it
    tokens_before_line_end = np.searchsorted(edges, np.append(newlines, len(chars)),
                                             side="right") // 2
    columns = np.diff(tokens_before_line_end, prepend=0)
    lines = np.flatnonzero(columns)
    return edges[0::2], edges[1::2], columns[lines], lines + 1


def _padded_chars(data: bytes, longest_token: int) -> np.ndarray:
    """``data`` as uint8 with zeros after it, enough for :func:`_token_rows` of any token."""
    return np.frombuffer(data + bytes(_row_width(longest_token, words=True)), dtype=np.uint8)


def _row_width(longest: int, words: bool) -> int:
    return -(-max(longest, 1) // 8) * 8 if words else max(longest, 1)


def _token_rows(chars: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                words: bool = False) -> np.ndarray:
    """Tokens as rows of a uint8 matrix, zero-padded to the longest (to a multiple of 8 bytes
    with ``words``, so that rows can be viewed as uint64). ``chars`` from :func:`_padded_chars`."""
    width = _row_width(int(lengths.max(initial=0)), words)
    rows = np.lib.stride_tricks.sliding_window_view(chars, width)[starts]
    np.multiply(rows, np.arange(width, dtype=np.int32) < lengths[:, None], out=rows)
    return rows


def _hash_rows(rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each zero-padded row (multiply-xorshift over its 8-byte words).

    Only the words that hold the token's bytes are mixed in, so a token hashes the same however
    wide the rows are (the widest token of the column sets the width: a run's docids and the
    qrels' relevant docids are hashed in separate calls and must agree)."""
    words = np.ascontiguousarray(rows.view(np.uint64).T)
    hashes = lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for k, word in enumerate(words):
        mixed = (hashes ^ word) * np.uint64(0xBF58476D1CE4E5B9)
        mixed ^= mixed >> np.uint64(31)
        hashes = np.where(lengths > 8 * k, mixed, hashes)
    return hashes


_POWERS_OF_TEN = 10.0 ** np.arange(16)       # exact as float64
_PLAIN_DIGITS = 15                           # below 2**53: exact as float64
_PLAIN_WIDTH = _PLAIN_DIGITS + 2             # sign, digits, dot


def _parse_scores(chars: np.ndarray, data: bytes, starts: np.ndarray, ends: np.ndarray, path,
                  line_numbers: np.ndarray) -> np.ndarray:
    """Score tokens as float64, equal to Python's ``float(token)`` for every token.

    Plain decimals (``[+-]digits[.digits]``, at most 15 digits) are parsed with numpy: their
    digits as an exact integer divided by an exact power of ten, a correctly rounded division,
    hence the same double as a correctly rounded ``strtod``. The rest (exponents, inf, ...) go
    through ``float``.
    """
    lengths = ends - starts
    short = lengths <= _PLAIN_WIDTH
    columns = np.ascontiguousarray(_token_rows(chars, starts, np.minimum(lengths, _PLAIN_WIDTH)).T)
    mantissa = np.zeros(len(starts), dtype=np.int64)
    digits = np.zeros(len(starts), dtype=np.int8)
    fraction_digits = np.zeros(len(starts), dtype=np.int8)
    dots = np.zeros(len(starts), dtype=np.int8)
    for column in columns:
        value = column - np.uint8(ord("0"))
        is_digit = value < 10
        np.multiply(mantissa, 10, out=mantissa, where=is_digit)
        np.add(mantissa, value, out=mantissa, where=is_digit)
        digits += is_digit
        fraction_digits += is_digit & (dots > 0)
        dots += column == ord(".")
    signed = (columns[0] == ord("-")) | (columns[0] == ord("+"))
    plain = (short & (digits + dots + signed == lengths) & (dots <= 1) & (digits >= 1)
             & (digits <= _PLAIN_DIGITS))
    scores = mantissa / _POWERS_OF_TEN[np.minimum(fraction_digits, _PLAIN_DIGITS)]
    scores[columns[0] == ord("-")] *= -1
    for i in np.flatnonzero(~plain).tolist():
        token = data[starts[i]:ends[i]]
        try:
            scores[i] = float(token)
        except ValueError:
            raise InputError(f"score {token.decode()!r} is not a number", path,
                             int(line_numbers[i]), "score") from None
    nan = np.flatnonzero(np.isnan(scores))
    if len(nan):
        raise InputError("score is NaN", path, int(line_numbers[nan[0]]), "score")
    return scores


def _factorize(chars: np.ndarray, data: bytes, starts: np.ndarray,
               ends: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Distinct qids (first-appearance order) and each line's index; fast for grouped runs."""
    lengths = ends - starts
    words = _token_rows(chars, starts, lengths, words=True).view(np.uint64)
    changed = np.ones(len(starts), dtype=bool)
    changed[1:] = (lengths[1:] != lengths[:-1]) | (words[1:] != words[:-1]).any(axis=1)
    segments = np.flatnonzero(changed)
    codes: dict[bytes, int] = {}
    segment_codes = np.fromiter((codes.setdefault(data[s:e], len(codes)) for s, e
                                 in zip(starts[segments].tolist(), ends[segments].tolist())),
                                dtype=np.int64, count=len(segments))
    index = np.repeat(segment_codes, np.diff(np.append(segments, len(starts))))
    return [q.decode() for q in codes], index


def _check_no_duplicates(query_index: np.ndarray, docids: ByteTokens, path,
                         line_numbers: np.ndarray) -> None:
    # the high 32 bits of a (query, docid) hash: a faster sort; collisions are checked below
    keys = ((docids.hashes ^ (query_index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
            >> np.uint64(32)).astype(np.uint32)
    ordered = np.sort(keys)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):
        return
    suspects = np.flatnonzero(may_be_in(keys, repeated))
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

