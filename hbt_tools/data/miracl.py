"""MIRACL (topics TSV, TREC qrels, passage corpus JSONL) -> the toolkit's evaluation set.

Ids are MIRACL's own (``11485106#0``, ``12215#0``), so outputs stay comparable with MIRACL's
official qrels and runs. The corpus (``.jsonl`` or ``.jsonl.gz``, one or several files, e.g.
MIRACL's ``docs-*.jsonl.gz`` shards) is streamed row by row: memory does not grow with it.
Each corpus row becomes ``{"id", "text": title + " " + text, "title", "lang"}``.
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..io import InputError, decode_text, iter_jsonl, iter_lines
from ..io import field as get_field
from ..trec import is_trec_word, read_qrels
from .evalset import write_eval_files


@dataclass
class CorpusStats:
    passages: int = 0
    judged_found: set[str] = field(default_factory=set)


def read_topics(path: str, lang: str) -> list[dict]:
    """``qid<TAB>text`` lines -> query rows ``{"id", "text", "lang"}`` (ids unique)."""
    queries, seen = [], set()
    for lineno, raw in iter_lines(path):
        qid, tab, text = decode_text(raw, path, lineno).partition("\t")
        qid, text = qid.strip(), text.strip()
        if not tab:
            raise InputError("expected 'qid<TAB>text', found no tab", path, lineno)
        if not is_trec_word(qid):
            raise InputError(f"query id {qid!r} is empty or holds white space or NUL", path,
                             lineno, "qid")
        if not text:
            raise InputError("empty", path, lineno, "text")
        if qid in seen:
            raise InputError(f"duplicate query id {qid!r}", path, lineno, "qid")
        seen.add(qid)
        queries.append({"id": qid, "text": text, "lang": lang})
    if not queries:
        raise InputError("empty input: no topics", path)
    return queries


def read_judgements(path: str, query_ids: set[str]) -> list[tuple[str, str, int]]:
    """TREC qrels (MIRACL's tabs and ``Q0`` accepted) -> ``(qid, docid, rel)`` rows, all rels.

    Every judged query must be one of ``query_ids`` (a mismatch means mixed-up files)."""
    rows = []
    for qid, judged in read_qrels(path).items():
        if qid not in query_ids:
            raise InputError(f"query {qid!r} is judged here but missing from the topics", path,
                             None, "qid")
        rows.extend((qid, docid, rel) for docid, rel in judged.items())
    return rows


def iter_corpus(paths: Iterable[str], lang: str, stats: CorpusStats | None = None,
                judged: set[str] = frozenset()) -> Iterator[dict]:
    """Stream corpus rows from MIRACL passage files; a judged docid seen twice is an error."""
    stats = stats if stats is not None else CorpusStats()
    for path in paths:
        lineno = 0
        rows = iter_jsonl(path)
        while True:
            try:
                lineno, obj = next(rows)
            except StopIteration:
                break
            except (gzip.BadGzipFile, EOFError, zlib.error) as e:
                raise InputError(f"not a valid gzip file ({e})", path, lineno + 1) from None
            docid = get_field(obj, "docid", str, path, lineno, nonempty=True)
            if not is_trec_word(docid):
                raise InputError(f"docid {docid!r} holds white space or NUL", path, lineno,
                                 "docid")
            title = get_field(obj, "title", str, path, lineno, default="")
            text = get_field(obj, "text", str, path, lineno)
            if docid in judged:
                if docid in stats.judged_found:
                    raise InputError(f"duplicate docid {docid!r}", path, lineno, "docid")
                stats.judged_found.add(docid)
            stats.passages += 1
            yield {"id": docid, "text": f"{title} {text}" if title else text, "title": title,
                   "lang": lang}


def prepare_miracl(out_dir: str, topics: str, qrels: str, lang: str,
                   corpus: list[str] | None = None, progress: bool = True) -> dict:
    """Write ``out_dir``/{queries.jsonl, qrels.trec[, corpus.jsonl]} -> summary counts.

    The summary has ``queries``, ``judgements``, and with a corpus ``passages`` and
    ``judged_missing`` (judged docids that no corpus file holds).
    """
    if not lang or any(c.isspace() for c in lang):
        raise InputError(f"--lang: expected a language code, got {lang!r}")
    queries = read_topics(topics, lang)
    judgements = read_judgements(qrels, {q["id"] for q in queries})
    judged = {docid for _, docid, _ in judgements}
    stats = CorpusStats()
    passages = None
    if corpus:
        passages = iter_corpus(corpus, lang, stats, judged)
        if progress:
            from tqdm import tqdm

            passages = tqdm(passages, desc=f"MIRACL {lang} corpus", unit=" passages",
                            disable=None, mininterval=1.0)
    write_eval_files(out_dir, queries, judgements, passages)
    summary = {"queries": len(queries), "judgements": len(judgements)}
    if corpus:
        summary.update(passages=stats.passages, judged_missing=len(judged - stats.judged_found))
    return summary
