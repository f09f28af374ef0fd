"""TREC qrels and run files: readers with file:line errors, and a run writer.

qrels: ``qid ITER docid rel`` (whitespace or tabs; MIRACL's ``Q0`` accepted). Only rel >= 1 is
relevant, but rel-0 rows are kept (they matter for nothing but trec_eval's judged counts).
runs:  ``qid Q0 docid rank score tag``; 3-column ``qid docid score`` is accepted when reading.
"""
from __future__ import annotations

import math
import os
from typing import IO, Iterable, Sequence

from .io import InputError, iter_lines

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def read_qrels(path: str | os.PathLike) -> Qrels:
    qrels: Qrels = {}
    for lineno, raw in iter_lines(path):
        parts = _split(raw, path, lineno)
        if len(parts) != 4:
            raise InputError(f"expected 4 columns 'qid iter docid rel', got {len(parts)}",
                             path, lineno)
        qid, _, docid, rel = parts
        try:
            rel_value = int(rel)
        except ValueError:
            try:
                rel_value = int(float(rel))
            except ValueError:
                raise InputError(f"relevance {rel!r} is not a number", path, lineno,
                                 "rel") from None
        qrels.setdefault(qid, {})[docid] = rel_value
    if not qrels:
        raise InputError("empty qrels", path)
    return qrels


def read_run(path: str | os.PathLike) -> Run:
    run: Run = {}
    for lineno, raw in iter_lines(path):
        parts = _split(raw, path, lineno)
        if len(parts) == 6:
            qid, docid, score = parts[0], parts[2], parts[4]
        elif len(parts) == 3:
            qid, docid, score = parts
        else:
            raise InputError(f"expected 6 columns 'qid Q0 docid rank score tag' (or 3: "
                             f"'qid docid score'), got {len(parts)}", path, lineno)
        try:
            value = float(score)
        except ValueError:
            raise InputError(f"score {score!r} is not a number", path, lineno, "score") from None
        if math.isnan(value):
            raise InputError("score is NaN", path, lineno, "score")
        run.setdefault(qid, {})[docid] = value
    return run


def _split(raw: bytes, path, lineno: int) -> list[str]:
    try:
        return raw.decode("utf-8").split()
    except UnicodeDecodeError as e:
        raise InputError(f"not valid UTF-8 (byte {e.start})", path, lineno) from None


def format_run_lines(qid: str, docids: Sequence[str], scores: Sequence[float],
                     tag: str = "hbt") -> str:
    """TREC run lines for one query; ``docids`` must already be in rank order."""
    return "".join(f"{qid} Q0 {d} {r} {s:.6f} {tag}\n"
                   for r, (d, s) in enumerate(zip(docids, scores), 1))


def write_run(fh: IO[bytes], run: Iterable[tuple[str, Sequence[str], Sequence[float]]],
              tag: str = "hbt") -> None:
    for qid, docids, scores in run:
        fh.write(format_run_lines(qid, docids, scores, tag).encode("utf-8"))
