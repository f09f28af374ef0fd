"""Dense indexes on disk: build a faiss index from ``NAME.npy`` and load it back (``hbt-index``).

An index is a directory, so that the passage ids and languages travel with the vectors::

    INDEX/
      meta.json     {"format": "hbt-index", "version": 1, "type": "flat", "metric": "inner_product",
                     "dim": 384, "count": 100000, "langs": {"de": 50000, "en": 50000}, "params": {...}}
      index.faiss   the faiss index (faiss.write_index); faiss id i is row i of the embeddings
      ids.jsonl     one {"id": ..., "lang": ...} line per row, in the same order

Types: ``flat`` (exact inner product, the default), ``hnsw`` (graph, approximate) and ``ivfpq``
(inverted lists of product-quantised codes, approximate, for corpora that do not fit in memory
as float32). Vectors are indexed as they are: hbt-encode's embeddings are normalised, so inner
product is cosine similarity.

The directory is built under a hidden temporary name beside INDEX and renamed into place only
when complete, so INDEX is never a half-written index (``kill -9`` can leave a hidden
``.INDEX.tmp*`` directory behind, never a broken INDEX).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import orjson

from .io import InputError, load_embeddings, sidecar_path
from .trec import is_trec_word

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
FORMAT_NAME = "hbt-index"
FORMAT_VERSION = 1
META_FILE, FAISS_FILE, IDS_FILE = "meta.json", "index.faiss", "ids.jsonl"
ADD_CHUNK_ROWS = 65536


@dataclass
class IndexSettings:
    """How to build an index; ``None`` fields get defaults that depend on the data."""

    type: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 200
    nlist: int | None = None      # ivfpq: inverted lists (default 4·√count, ≥ 39 rows per list)
    pq_m: int | None = None       # ivfpq: sub-quantisers (default dim / 8)
    nbits: int = 8                # ivfpq: bits per sub-quantiser code
    train_size: int | None = None  # ivfpq: rows sampled for training (default min(count, 256·nlist))
    seed: int = 0                 # ivfpq: training sample and k-means seed


@dataclass
class DenseIndex:
    """A loaded index directory: the faiss index plus row ids and languages."""

    directory: str
    meta: dict
    faiss_index: object
    ids: list[str]
    langs: list[str | None] = field(repr=False)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def type(self) -> str:
        return self.meta["type"]

    @cached_property
    def docids(self) -> np.ndarray:
        """Row ids as a numpy object array (fast gathering of result ids)."""
        out = np.empty(len(self.ids), dtype=object)
        out[:] = self.ids
        return out

    def rows_in_langs(self, langs: list[str]) -> np.ndarray:
        """Row numbers (ascending) whose language is one of ``langs``."""
        wanted = set(langs)
        return np.fromiter((i for i, lang in enumerate(self.langs) if lang in wanted),
                           dtype=np.int64)

    def flat_vectors(self) -> np.ndarray:
        """The stored float32 vectors of a flat index, as a view (valid while the index lives)."""
        import faiss

        n, d = self.faiss_index.ntotal, self.faiss_index.d
        return faiss.rev_swig_ptr(self.faiss_index.get_xb(), n * d).reshape(n, d)


# ---------------------------------------------------------------- building

def resolve_settings(settings: IndexSettings, count: int, dim: int, path: str) -> IndexSettings:
    """Check ``settings`` against the data and fill in the data-dependent defaults."""
    if settings.type not in INDEX_TYPES:
        raise InputError(f"unknown index type {settings.type!r} (choose {', '.join(INDEX_TYPES)})")
    if settings.type != "ivfpq":
        return settings
    nlist = settings.nlist or max(1, min(int(round(4 * count ** 0.5)), count // 39))
    if settings.pq_m is None and dim % 8:
        raise InputError(f"dim {dim} is not a multiple of 8: pass --pq-m, a divisor of {dim}", path)
    pq_m = settings.pq_m or dim // 8
    if dim % pq_m:
        raise InputError(f"--pq-m {pq_m} does not divide the dim {dim}", path)
    train_size = min(count, settings.train_size or 256 * max(nlist, 2 ** settings.nbits))
    needed = max(nlist, 2 ** settings.nbits)
    if train_size < needed:
        raise InputError(f"ivfpq with --nlist {nlist} and --nbits {settings.nbits} needs at least "
                         f"{needed} training rows, got {train_size}", path)
    return IndexSettings("ivfpq", nlist=nlist, pq_m=pq_m, nbits=settings.nbits,
                         train_size=train_size, seed=settings.seed)


def _empty_index(settings: IndexSettings, dim: int):
    import faiss

    if settings.type == "flat":
        return faiss.IndexFlatIP(dim)
    if settings.type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.ef_construction
        return index
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, settings.nlist, settings.pq_m, settings.nbits,
                             faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = settings.seed
    index.pq.cp.seed = settings.seed
    return index


def _finite_float32(emb, row_numbers, rows: list[dict], path: str) -> np.ndarray:
    """``emb[row_numbers]`` (a slice or an index array) as float32, refusing NaN and inf."""
    chunk = np.ascontiguousarray(emb[row_numbers], dtype=np.float32)
    bad = ~np.isfinite(chunk).all(axis=1)
    if bad.any():
        row = int(np.arange(len(rows))[row_numbers][np.flatnonzero(bad)[0]])
        raise InputError(f"row {row} (id {rows[row]['id']!r}) holds NaN or inf", path)
    return chunk


def build_faiss_index(emb, rows: list[dict], settings: IndexSettings, path: str,
                      progress: bool = True):
    """A faiss index over the rows of ``emb`` (faiss id i = row i); checks every row is finite."""
    from tqdm import tqdm

    count, dim = emb.shape
    index = _empty_index(settings, dim)
    if settings.type == "ivfpq":
        sample = np.sort(np.random.default_rng(settings.seed).choice(
            count, settings.train_size, replace=False))
        index.train(_finite_float32(emb, sample, rows, path))
    with tqdm(total=count, desc=f"hbt-index {settings.type}", unit=" rows",
              disable=None if progress else True, leave=False) as bar:
        for start in range(0, count, ADD_CHUNK_ROWS):
            stop = min(count, start + ADD_CHUNK_ROWS)
            index.add(_finite_float32(emb, slice(start, stop), rows, path))
            bar.update(stop - start)
    return index


def check_trec_ids(rows: list[dict], path: str) -> None:
    """Every row's id must be a TREC word (:func:`is_trec_word`)."""
    for row_number, row in enumerate(rows):
        if not is_trec_word(row["id"]):
            raise InputError(f"row {row_number}: id {row['id']!r} is empty or holds whitespace "
                             "or NUL, which a TREC run cannot hold", path, field="id")


def index_embeddings(npy_path: str, directory: str, settings: IndexSettings | None = None,
                     progress: bool = True) -> dict:
    """The whole ``hbt-index`` job: ``NAME.npy`` (+ ``NAME.ids.jsonl``) -> index directory.

    Returns the index's meta data.
    """
    settings = settings or IndexSettings()
    npy_path, directory = os.fspath(npy_path), os.fspath(directory)
    _check_replaceable(directory)
    emb, rows = load_embeddings(npy_path, mmap=True, check_finite=False)
    check_trec_ids(rows, sidecar_path(npy_path))
    count, dim = emb.shape
    settings = resolve_settings(settings, count, dim, npy_path)
    index = build_faiss_index(emb, rows, settings, npy_path, progress)
    langs: dict[str, int] = {}
    for row in rows:
        if row["lang"] is not None:
            langs[row["lang"]] = langs.get(row["lang"], 0) + 1
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "type": settings.type,
            "metric": "inner_product", "dim": dim, "count": count, "langs": langs,
            "params": _type_params(settings), "source": os.path.basename(npy_path)}
    write_index_directory(directory, index, rows, meta)
    return meta


def _type_params(settings: IndexSettings) -> dict:
    if settings.type == "hnsw":
        return {"hnsw_m": settings.hnsw_m, "ef_construction": settings.ef_construction}
    if settings.type == "ivfpq":
        return {"nlist": settings.nlist, "pq_m": settings.pq_m, "nbits": settings.nbits,
                "train_size": settings.train_size, "seed": settings.seed}
    return {}


# ---------------------------------------------------------------- the directory on disk

def is_index_directory(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


def _check_replaceable(directory: str) -> None:
    """Refuse to replace anything at ``directory`` but an index or an empty directory."""
    if not os.path.lexists(directory):
        return
    if os.path.isdir(directory) and not os.path.islink(directory) and (
            is_index_directory(directory) or not os.listdir(directory)):
        return
    raise InputError("exists and is not an hbt index: not replacing it", directory)


def write_index_directory(directory: str, index, rows: list[dict], meta: dict) -> None:
    """Write the index directory under a temporary name, then rename it into place."""
    import faiss

    parent = os.path.dirname(os.path.abspath(directory))
    name = os.path.basename(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    _check_replaceable(directory)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp", dir=parent)
    try:
        with open(os.path.join(tmp, IDS_FILE), "wb") as fh:
            fh.write(b"".join(orjson.dumps({"id": r["id"], "lang": r["lang"]}) + b"\n"
                              for r in rows))
        faiss.write_index(index, os.path.join(tmp, FAISS_FILE))
        with open(os.path.join(tmp, META_FILE), "wb") as fh:
            fh.write(orjson.dumps(meta, option=orjson.OPT_INDENT_2) + b"\n")
        for file_name in (IDS_FILE, FAISS_FILE, META_FILE):
            _fsync_path(os.path.join(tmp, file_name))
        os.chmod(tmp, 0o755)
        _rename_into_place(tmp, directory, parent, name)
        _fsync_path(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rename_into_place(tmp: str, directory: str, parent: str, name: str) -> None:
    if not os.path.lexists(directory) or not os.listdir(directory):
        os.replace(tmp, directory)  # an empty directory is replaced by rename(2) itself
        return
    # Move the old index aside (rename(2) replaces only empty directories), then drop it.
    old = tempfile.mkdtemp(prefix=f".{name}.old", dir=parent)
    os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_index(directory: str) -> DenseIndex:
    """Load an index directory written by :func:`index_embeddings`, checking its parts agree."""
    import faiss

    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise InputError("no such index directory" if not os.path.exists(directory)
                         else "not an hbt index (expected a directory)", directory)
    meta_path = os.path.join(directory, META_FILE)
    try:
        with open(meta_path, "rb") as fh:
            meta = orjson.loads(fh.read())
    except FileNotFoundError:
        raise InputError(f"not an hbt index (no {META_FILE})", directory) from None
    except orjson.JSONDecodeError as e:
        raise InputError(f"not an hbt index meta file ({e})", meta_path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise InputError(f"not an hbt index meta file (no \"format\": \"{FORMAT_NAME}\")",
                         meta_path, field="format")
    for key in ("type", "dim", "count"):
        if key not in meta:
            raise InputError("missing", meta_path, field=key)
    faiss_path = os.path.join(directory, FAISS_FILE)
    if not os.path.isfile(faiss_path):
        raise InputError("no such file", faiss_path)
    try:
        faiss_index = faiss.read_index(faiss_path)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise InputError(f"not a faiss index ({reason})", faiss_path) from None
    ids, langs = _read_index_ids(os.path.join(directory, IDS_FILE))
    if not (faiss_index.ntotal == len(ids) == meta["count"]) or faiss_index.d != meta["dim"]:
        raise InputError(f"parts disagree: {META_FILE} says {meta['count']} rows of dim "
                         f"{meta['dim']}, {FAISS_FILE} holds {faiss_index.ntotal} of dim "
                         f"{faiss_index.d}, {IDS_FILE} {len(ids)} lines", directory)
    return DenseIndex(directory, meta, faiss_index, ids, langs)


def _read_index_ids(path: str) -> tuple[list[str], list[str | None]]:
    try:
        with open(path, "rb") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    try:  # one parse for all lines: this file is written by hbt-index, not by hand
        rows = orjson.loads(b"[" + b",".join(lines) + b"]")
        return [r["id"] for r in rows], [r["lang"] for r in rows]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        raise InputError("not an hbt index ids file (expected {\"id\", \"lang\"} lines)",
                         path) from None

