"""Writing an evaluation set: ``OUT/queries.jsonl``, ``OUT/qrels.trec`` and ``OUT/corpus.jsonl``.

All files are staged as temporary files and renamed into place together once everything was
written, so a failure (bad line in the middle of a corpus stream, Ctrl-C) leaves no partial set;
an output folder created for the run is removed again when it failed and stayed empty.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterable

from ..io import InputError, atomic_output, write_jsonl

QUERIES, QRELS, CORPUS = "queries.jsonl", "qrels.trec", "corpus.jsonl"


def write_eval_files(out_dir: str, queries: Iterable[dict],
                     qrels: Iterable[tuple[str, str, int]],
                     corpus: Iterable[dict] | None = None) -> dict[str, int]:
    """Write the set (``corpus`` may be a stream; None writes no corpus file) -> row counts."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError("-o: exists and is not a directory", out_dir)
    created = not os.path.exists(out_dir)
    names = [QUERIES, QRELS] + ([CORPUS] if corpus is not None else [])
    try:
        with contextlib.ExitStack() as stack:
            out = {name: stack.enter_context(atomic_output(os.path.join(out_dir, name)))
                   for name in names}
            counts = {QUERIES: write_jsonl(out[QUERIES], queries)}
            counts[QRELS] = 0
            for qid, docid, rel in qrels:
                out[QRELS].write(f"{qid} 0 {docid} {rel}\n".encode("utf-8"))
                counts[QRELS] += 1
            if corpus is not None:
                counts[CORPUS] = write_jsonl(out[CORPUS], corpus)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)
        raise
    return counts
