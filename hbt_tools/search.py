"""Top-k search of query embeddings over index shards, written as a TREC run (``hbt-search``).

Order: hits are ranked as trec_eval ranks them when it reads the run back, by the printed score
(6 decimals) descending, then docid descending. Exactness for flat indexes, ties included: each
shard is asked for k + 1 hits, and again for more while its k-th and (k+1)-th printed scores are
equal, so no tied passage is dropped at the cut; shards are merged by the same order.

Flat shards are scored by :func:`flat_top_k` (numpy's BLAS, faiss' heaps); ``--lang`` restricts
them to that language's rows of vectors, and hnsw and ivfpq shards through a faiss ID selector.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import IO, Iterator

import numpy as np

from .indexing import DenseIndex, check_trec_ids, load_index
from .io import InputError, atomic_output, load_embeddings, sidecar_path
from .memory import keep_freed_memory
from .trec import is_trec_word

SCORE_DECIMALS = 6
_SCALE = 10.0 ** SCORE_DECIMALS


def printed_scores(scores: np.ndarray) -> np.ndarray:
    """Scores as the integers ``round(score·10⁶)`` that ``%.6f`` prints (float64; exact).

    A float32 times 10⁶ is exact in float64 (24 + 20 bits), and ``rint`` rounds half to even as
    printf does on the exact binary value, so equal results mean equal printed scores.
    """
    return np.rint(scores.astype(np.float64) * _SCALE)


@dataclass
class _Target:
    """One shard as searched: the whole faiss index or a language sub-index/selector."""

    faiss_index: object
    index_type: str
    count: int                         # candidates
    offset: int                        # the shard's first global label
    label_map: np.ndarray | None = None  # row of vectors -> shard row
    selector: object = None            # faiss IDSelector (hnsw, ivfpq) restricting candidates
    vectors: np.ndarray | None = None  # a flat target's candidates, searched by flat_top_k


class Searcher:
    """Exact-order top-k over one or more loaded index shards, optionally restricted to languages.

    Global labels number the rows of all shards one after the other.
    """

    def __init__(self, indexes: list[DenseIndex], langs: list[str] | None = None,
                 ef_search: int = 128, nprobe: int = 16):
        self.indexes, self.ef_search, self.nprobe = indexes, ef_search, nprobe
        if len(indexes) == 1:
            self.docids = indexes[0].docids
        else:
            self.docids = np.concatenate([index.docids for index in indexes])
            self._check_unique_ids()
        if langs:
            self._check_langs(langs)
        self.targets: list[_Target] = []
        offset = 0
        for index in indexes:
            target = self._target(index, offset, langs)
            if target is not None:
                self.targets.append(target)
            offset += len(index.ids)

    def _check_unique_ids(self) -> None:
        seen: dict[str, str] = {}
        for index in self.indexes:
            for docid in index.ids:
                if docid in seen:
                    raise InputError(f"duplicate id {docid!r}: also in shard {seen[docid]}",
                                     index.directory, field="id")
                seen[docid] = index.directory

    def _check_langs(self, langs: list[str]) -> None:
        present = set().union(*(index.meta.get("langs", {}) for index in self.indexes))
        for lang in langs:
            if lang not in present:
                where = ", ".join(index.directory for index in self.indexes)
                there = ", ".join(sorted(present)) or "none: its rows had no lang"
                raise InputError(f"no passages in language {lang!r} (languages there: {there})",
                                 where, field="lang")

    def _target(self, index: DenseIndex, offset: int, langs) -> _Target | None:
        import faiss

        flat = index.type == "flat"
        whole = _Target(index.faiss_index, index.type, len(index.ids), offset,
                        vectors=index.flat_vectors() if flat else None)
        if not langs:
            return whole
        rows = index.rows_in_langs(langs)
        if rows.size == 0:
            return None
        if rows.size == whole.count:
            return whole
        if flat:
            return _Target(index.faiss_index, "flat", rows.size, offset, label_map=rows,
                           vectors=whole.vectors[rows])
        return _Target(index.faiss_index, index.type, rows.size, offset,
                       selector=faiss.IDSelectorBatch(rows))

    @cached_property
    def _docid_rank(self) -> np.ndarray:
        """Position of each global label's docid in ascending string order (breaks score ties)."""
        order = sorted(range(len(self.docids)), key=self.docids.__getitem__)
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        return rank

    def _params(self, target: _Target, kk: int):
        import faiss

        if target.index_type == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, kk)
        elif target.index_type == "ivfpq":
            params = faiss.SearchParametersIVF()
            params.nprobe = self.nprobe
        else:
            return None
        if target.selector is not None:
            params.sel = target.selector
        return params

    def _top(self, target: _Target, queries: np.ndarray, kk: int):
        if target.vectors is not None:
            return flat_top_k(target.vectors, queries, kk)
        return target.faiss_index.search(queries, kk, params=self._params(target, kk))

    def _search_target(self, target: _Target, queries: np.ndarray, k: int):
        """Top hits of one target, widened until no printed-score tie crosses the k-th hit."""
        kk = min(k + 1, target.count)
        scores, labels = self._top(target, queries, kk)
        if kk > k:
            printed = printed_scores(scores)
            open_rows = np.flatnonzero((labels[:, k] >= 0) & (printed[:, k] == printed[:, k - 1]))
            while open_rows.size and kk < target.count:
                kk = min(2 * kk, target.count)
                more_scores, more_labels = self._top(target, queries[open_rows], kk)
                scores, labels = _widen(scores, kk, -np.inf), _widen(labels, kk, -1)
                scores[open_rows], labels[open_rows] = more_scores, more_labels
                printed_more = printed_scores(more_scores)
                still_open = (more_labels[:, -1] >= 0) & (
                    printed_more[:, -1] == printed_more[:, k - 1])
                open_rows = open_rows[still_open]
        found = labels >= 0
        if target.label_map is not None:
            labels = np.where(found, target.label_map[np.where(found, labels, 0)], -1)
        return scores, np.where(found, labels + target.offset, -1)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, labels)``, both ``(len(queries), k)`` in run order; label -1 = no hit."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        parts = [self._search_target(target, queries, k) for target in self.targets]
        scores = np.concatenate([s for s, _ in parts], axis=1)
        labels = np.concatenate([l for _, l in parts], axis=1)
        printed = printed_scores(scores)
        printed[labels < 0] = -np.inf
        if len(parts) == 1:  # faiss sorts by score: only rows with printed-score ties need work
            rows = np.flatnonzero((printed[:, 1:] >= printed[:, :-1]).any(axis=1))
        else:
            rows = np.arange(len(queries))
        if rows.size:
            sub_labels = labels[rows]
            order = np.lexsort((-self._docid_rank[sub_labels], -printed[rows]), axis=-1)
            scores[rows] = np.take_along_axis(scores[rows], order, axis=1)
            labels[rows] = np.take_along_axis(sub_labels, order, axis=1)
        scores, labels = scores[:, :k], labels[:, :k]
        if scores.shape[1] < k:
            scores, labels = _widen(scores, k, -np.inf), _widen(labels, k, -1)
        return scores, labels


FLAT_BLOCK_ROWS = 2048  # candidates scored per matrix product: 32 MB for 4,096 queries


def flat_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products, ``(scores, rows)`` best first (row -1 = no hit), as
    faiss' ``IndexFlatIP.search`` computes them: scores block by block, kept in faiss' heaps.

    The products run on numpy's BLAS rather than faiss': faiss-cpu wheels bundle an OpenBLAS
    (0.3.15 in faiss-cpu 1.15) that predates recent CPUs, and on an Intel Xeon with AMX it ran
    at ~50 GFLOP/s against ~140 for numpy's (4,096 x 100k x 384: 6.2 s vs 2.5 s).
    """
    import faiss

    scores = np.empty((len(queries), k), dtype=np.float32)
    rows = np.empty((len(queries), k), dtype=np.int64)
    heaps = faiss.float_minheap_array_t()  # a min-heap per query keeps its k largest
    heaps.k, heaps.nh = k, len(queries)
    heaps.val, heaps.ids = faiss.swig_ptr(scores), faiss.swig_ptr(rows)
    heaps.heapify()
    for start in range(0, len(vectors), FLAT_BLOCK_ROWS):
        block = np.ascontiguousarray(queries @ vectors[start:start + FLAT_BLOCK_ROWS].T)
        heaps.addn(block.shape[1], faiss.swig_ptr(block), start)
    heaps.reorder()
    return scores, rows


def _widen(array: np.ndarray, width: int, fill) -> np.ndarray:
    out = np.full((array.shape[0], width), fill, dtype=array.dtype)
    out[:, :array.shape[1]] = array
    return out


_POWERS_OF_TEN = 10 ** np.arange(19, dtype=np.int64)
_THREE_DIGITS = np.array([f"{i:03d}" for i in range(1000)], dtype="S3").view(np.uint8).reshape(
    1000, 3)


def score_byte_matrix(scores: np.ndarray) -> np.ndarray:
    """``%.6f`` of each score as a uint8 matrix, one row each, where NUL bytes stand for nothing
    (dropped when the run block is joined), vectorised: columns sign, integer digits (leading
    zeros as NUL), ``.``, six decimals, from :func:`printed_scores` (which rounds exactly as
    printf does)."""
    scores = np.asarray(scores, dtype=np.float32).ravel()
    printed = printed_scores(scores)
    if not np.isfinite(printed).all() or (scores.size and np.abs(printed).max() >= 1e18):
        return _byte_matrix([f"{s:.{SCORE_DECIMALS}f}".encode() for s in scores.tolist()])
    whole, fraction = np.divmod(np.abs(printed).astype(np.int64), int(_SCALE))
    width = max(int(np.searchsorted(_POWERS_OF_TEN, whole.max(initial=0), side="right")), 1)
    out = np.empty((scores.size, 2 + width + SCORE_DECIMALS), np.uint8)
    # printf writes -0.000000 for tiny negatives, as here
    out[:, 0] = np.where(np.signbit(scores), ord("-"), 0)
    for j in range(width):
        power = _POWERS_OF_TEN[width - 1 - j]
        digit = 48 + (whole // power) % 10
        out[:, 1 + j] = digit if j == width - 1 else np.where(whole >= power, digit, 0)
    out[:, 1 + width] = ord(".")
    out[:, 2 + width:5 + width] = _THREE_DIGITS[fraction // 1000]
    out[:, 5 + width:] = _THREE_DIGITS[fraction % 1000]
    return out


def _byte_matrix(strings) -> np.ndarray:
    """Byte strings (list or ``S`` array) as a uint8 matrix, one row each, NUL-padded."""
    fixed = np.asarray(strings, dtype=bytes)
    return fixed.view(np.uint8).reshape(len(fixed), fixed.itemsize)


def format_run_block(qids: list[str], scores: np.ndarray, labels: np.ndarray,
                     docids: np.ndarray, tag: str) -> bytes:
    """TREC run lines ``qid Q0 docid rank score tag`` for a batch of queries, as one bytes block.

    Row i of ``scores``/``labels`` holds query i's hits in rank order (label -1 = none);
    ``docids`` holds the docids' UTF-8 bytes by label (:func:`docid_table`). Each field of
    every line is written into a column block of one byte matrix; dropping the NULs leaves the
    lines (ids and tags hold no NUL: :func:`hbt_tools.indexing.check_trec_ids`,
    :func:`check_tag`).
    """
    found = labels >= 0
    query_rows, ranks = np.nonzero(found)  # row-major: query by query, in rank order
    lines = len(query_rows)
    hit_docids = docids[labels[found]]
    fields = [
        _byte_matrix([f"{qid} Q0 ".encode() for qid in qids])[query_rows],
        hit_docids if hit_docids.dtype == np.uint8 else _byte_matrix(hit_docids),
        _byte_matrix([f" {rank} ".encode() for rank in range(1, labels.shape[1] + 1)])[ranks],
        score_byte_matrix(scores[found]),
        np.broadcast_to(np.frombuffer(f" {tag}\n".encode(), np.uint8), (lines, len(tag) + 2))]
    matrix = np.concatenate(fields, axis=1).ravel()
    return matrix[matrix != 0].tobytes()


_DOCID_MATRIX_BYTES = 2 ** 30


def docid_table(docids: np.ndarray, max_matrix_bytes: int = _DOCID_MATRIX_BYTES) -> np.ndarray:
    """The docids' UTF-8 bytes for :func:`format_run_block`, made once per search: one
    NUL-padded uint8 row per docid (a row lookup per hit is ~6x faster than converting Python
    bytes objects), or, where that matrix would pass ``max_matrix_bytes`` (many long ids), an
    object array of bytes converted per batch."""
    encoded = [docid.encode("utf-8") for docid in docids.tolist()]
    width = max(map(len, encoded), default=1)
    if len(encoded) * width <= max_matrix_bytes:
        return _byte_matrix(encoded)
    return np.array(encoded, dtype=object)


def _search_batches(searcher: Searcher, queries: np.ndarray, k: int,
                    batch_size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(first query, scores, labels)`` per batch; the next batch is searched (faiss, without
    the GIL) while the caller formats and writes this one."""
    starts = range(0, len(queries), batch_size)
    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = worker.submit(searcher.search, queries[:batch_size], k)
        for start in starts:
            scores, labels = pending.result()
            following = start + batch_size
            if following < len(queries):
                pending = worker.submit(searcher.search,
                                        queries[following:following + batch_size], k)
            yield start, scores, labels


def check_tag(tag: str) -> None:
    if not is_trec_word(tag):
        raise InputError(f"run tag {tag!r} must be one word (no whitespace or NUL)", field="tag")


def search_to_run(index_dirs: list[str], queries_npy: str, output: str | IO = "-", k: int = 100,
                  langs: list[str] | None = None, tag: str = "hbt", batch_size: int = 4096,
                  ef_search: int = 128, nprobe: int = 16, progress: bool = True) -> int:
    """The whole ``hbt-search`` job: query embeddings x index shards -> TREC run.

    ``output`` is a path (written atomically), ``-`` for stdout, or an open binary file.
    Returns the number of run lines written.
    """
    if k < 1:
        raise InputError(f"-k must be at least 1, got {k}", field="k")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}", field="batch-size")
    check_tag(tag)
    if not index_dirs:
        raise InputError("no index given")
    keep_freed_memory()  # each batch's score, label and line buffers reuse the last one's
    indexes = [load_index(directory) for directory in index_dirs]
    queries, query_rows = load_embeddings(queries_npy)
    check_trec_ids(query_rows, sidecar_path(queries_npy))
    for index in indexes:
        if index.dim != queries.shape[1]:
            raise InputError(f"queries have dim {queries.shape[1]} but index {index.directory} "
                             f"has dim {index.dim}", queries_npy)
    searcher = Searcher(indexes, langs, ef_search=ef_search, nprobe=nprobe)
    qids = [row["id"] for row in query_rows]
    with _run_output(output) as out:
        return write_search_run(searcher, queries, qids, out, k, tag, batch_size, progress)


def write_search_run(searcher: Searcher, queries: np.ndarray, qids: list[str], out: IO[bytes],
                     k: int = 100, tag: str = "hbt", batch_size: int = 4096,
                     progress: bool = True) -> int:
    """Search ``queries`` (row i has id ``qids[i]``) and write the run to ``out`` batch by batch.

    Returns the number of run lines written.
    """
    from tqdm import tqdm

    written = 0
    docids = docid_table(searcher.docids)
    with tqdm(total=len(qids), desc="hbt-search", unit=" queries",
              disable=None if progress else True, leave=False) as bar:
        for start, scores, labels in _search_batches(searcher, queries, k, batch_size):
            out.write(format_run_block(qids[start:start + len(scores)], scores, labels,
                                       docids, tag))
            written += int((labels >= 0).sum())
            bar.update(len(scores))
    return written


def _run_output(output):
    if isinstance(output, (str, os.PathLike)):
        return atomic_output(output)
    return nullcontext(output)

