"""Training batches from parallel pairs: the library behind ``hbt-make-batches``.

Input: one or more ``pairs.jsonl`` files (one line per language version of a QA example; lines
sharing ``group`` are translations of each other). Each file is one *dataset*. Output: batches as
dicts ``{"step", "kind", "dataset", "items": [{"group", "query", "query_lang", "positive",
"positive_lang", "negatives"}]}``.

Nothing but byte offsets is kept in memory: :func:`index_pairs` reads a file once (big files in
one process per CPU, each on its own range of lines), checks every line and keeps, per line, its
offset, length, line number, group and language in numpy arrays; batches then re-read the lines
they need with ``os.pread`` (faster here than a memory map, and nothing accumulates in memory).

Definitions (what the tests check):

* **kinds** of batch. ``mono``: the batch's language L is drawn uniformly among the dataset's
  languages, and every item's query and positive are the group's L line; only groups that have
  an L line can be used. A language with fewer groups than the batch size can never fill a batch
  and is left out of the draw (:attr:`BatchSampler.notes` says so). ``cross``: every item's
  (query language, positive language) is an ordered pair of distinct languages drawn uniformly
  among the languages its group has; groups with a single language cannot be used. ``mixed``:
  every item uses one language for both query and positive, drawn uniformly among its group's
  languages, so languages are mixed within a batch.
* **strategies**: ``mono``, ``cross``, ``mixed`` make only batches of that kind; ``hybrid`` makes
  each batch ``mono`` with probability ``alpha``, else ``cross``.
* **datasets**: each batch comes from one dataset, drawn independently per batch with probability
  proportional to its number of usable groups (``proportional``), equal for all (``uniform``),
  or proportional to ``usable_groups ** temperature`` (``temperature``: 1 is proportional,
  smaller is flatter, 0 would be uniform; SPEC's size^T).
* **passes and epochs**: a dataset is consumed in *passes*. A pass shuffles the dataset's usable
  groups; each batch takes the first ``batch_size`` groups, in that order, that are not yet used
  in this pass and fit the batch's kind (and language). A group is therefore used at most once
  per pass, and a batch never holds two items of one group. When the drawn kind or language has
  fewer than ``batch_size`` unused groups left, the pass ends (its leftover groups are skipped)
  and a new shuffled pass starts. With every group in every language (fully parallel data) a
  pass is exactly ``floor(usable_groups / batch_size)`` batches.
  One *epoch* is ``sum over datasets of floor(usable_groups / batch_size)`` steps, so
  ``epochs=E`` gives exactly ``E`` times that many batches, and ``steps=N`` exactly ``N``.
  *Usable groups* per strategy: ``mono``: groups with a line in a language that fills batches;
  ``cross``: groups with two or more languages; ``hybrid``: groups usable by either (with
  ``alpha`` strictly between 0 and 1); ``mixed``: every group.
* **determinism**: the same files, options and seed give the same batches (numpy's PCG64),
  whatever the number of processes that indexed the files.
* Negatives come from the positive's line (they are passages in the positive's language).
* Input checks: every line must be a JSON object with non-empty strings ``group``, ``lang``,
  ``query``, ``positive`` and optional ``negatives`` (a list of strings); one group may not have
  two lines in one language. ``langs`` drops the lines in other languages.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import multiprocessing
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field as dataclass_field
from itertools import chain, compress, count, repeat
from operator import itemgetter
from typing import IO, Iterator, Sequence

import numpy as np
import orjson

from .io import STDIO, InputError, display_name, field, open_file, parse_json_line

STRATEGIES = ("hybrid", "mono", "cross", "mixed")
DATASET_SAMPLING = ("proportional", "uniform", "temperature")
BLOCK_BYTES = 16 << 20
RANGE_MIN_BYTES = 64 << 20  # files at least twice this size are indexed by several processes
PARSE_SLICE = 256


# ---------------------------------------------------------------- indexing

@dataclass
class PairsIndex:
    """Where each usable line of one pairs file lies, grouped by ``group`` then language.

    Rows are sorted by (group, language); the rows of group ``g`` are
    ``group_start[g]:group_start[g + 1]``, one per language, languages in ``langs`` order.
    """

    path: str
    source: IO[bytes]
    langs: list[str]
    line_offset: np.ndarray  # int64 byte offset of each row's line
    line_length: np.ndarray  # int32 bytes, newline excluded
    line_number: np.ndarray  # int64, 1-based, for messages
    line_lang: np.ndarray  # int16 index into langs
    group_start: np.ndarray  # int64, n_groups + 1

    @property
    def n_groups(self) -> int:
        return len(self.group_start) - 1

    @property
    def n_lines(self) -> int:
        return len(self.line_offset)

    def read_rows(self, rows: np.ndarray) -> list[dict]:
        """Parse the lines of ``rows`` (re-read from the file)."""
        fd, pread, loads = self.source.fileno(), os.pread, orjson.loads
        return [loads(pread(fd, length, offset))
                for offset, length in zip(self.line_offset[rows].tolist(), self.line_length[rows].tolist())]

    def close(self) -> None:
        self.source.close()


def index_pairs(path: str, langs: Sequence[str] | None = None) -> PairsIndex:
    """Read and check every line of a pairs file; keep only where each line is.

    ``langs`` keeps only lines in those languages. ``-`` (stdin) and ``.gz`` files are first
    copied, decompressed, to an anonymous temporary file (batches need random access).
    Raises :class:`InputError` naming file, line and field on any bad line.
    """
    source = _open_random_access(path)
    try:
        return _index_source(path, source, langs)
    except BaseException:
        source.close()
        raise


def _open_random_access(path: str) -> IO[bytes]:
    if path == STDIO or path.endswith(".gz"):
        spool = tempfile.TemporaryFile()
        try:
            if path == STDIO:
                shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
            else:
                with open_file(path, buffering=0) as raw, gzip.open(raw) as unzipped:
                    shutil.copyfileobj(unzipped, spool, 1 << 20)
        except (OSError, EOFError) as e:
            spool.close()
            raise InputError(f"cannot read ({e})", path) from None
        spool.seek(0)
        return spool
    return open_file(path, buffering=0)


def _index_source(path: str, source: IO[bytes], keep_langs: Sequence[str] | None) -> PairsIndex:
    allowed = frozenset(keep_langs) if keep_langs else None
    fd = source.fileno()
    bounds = _split_ranges(fd, _worker_count(os.fstat(fd).st_size))
    if len(bounds) > 2:
        # Big files: one process per CPU, each indexing one range of whole lines.
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(len(bounds) - 1, mp_context=context) as pool:
            found = list(pool.map(_index_range, repeat(fd), bounds[:-1], bounds[1:], repeat(path),
                                  repeat(allowed)))
    else:
        found = [_index_range(fd, 0, bounds[-1], path, allowed)]

    group_ids, lang_ids = _FirstSeen(), _FirstSeen()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("offset", "length", "number", "group", "lang")}
    lines_before = 0
    for part in found:
        if part.error is not None:
            message, line, field_name = part.error
            raise InputError(message, path, line + lines_before, field_name)
        parts["group"].append(group_ids.ids(part.groups)[part.group])
        parts["lang"].append(lang_ids.ids(part.langs)[part.lang])
        parts["offset"].append(part.offset)
        parts["length"].append(part.length)
        parts["number"].append(part.number + lines_before)
        lines_before += part.n_lines
    if not sum(part.n_pairs for part in found):
        raise InputError("empty input: no pairs", path)
    if not group_ids.table:
        raise InputError(f"no lines in the languages {','.join(keep_langs)} (found: "
                         f"{','.join(sorted(lang_ids.table))})", path, field="lang")
    cat = {k: np.concatenate(v) for k, v in parts.items()}

    # Dense group ids in order of first appearance; languages in sorted order of their codes.
    group = group_ids.dense(cat["group"])
    names = list(lang_ids.table)
    present = sorted(name for name in names if allowed is None or name in allowed)
    rank = np.array([present.index(name) if name in present else -1 for name in names], np.int16)
    lang = rank[lang_ids.dense(cat["lang"])]

    order = np.lexsort((lang, group))
    group, lang, number = group[order], lang[order], cat["number"][order]
    same = np.flatnonzero((group[1:] == group[:-1]) & (lang[1:] == lang[:-1]))
    if len(same):
        first, second = sorted(number[same[0]:same[0] + 2].tolist())
        name = list(group_ids.table)[group[same[0]]]
        raise InputError(f"group {name!r} already has a {present[lang[same[0]]]!r} line "
                         f"(line {first})", path, second, "lang")
    counts = np.bincount(group, minlength=len(group_ids.table))
    return PairsIndex(
        path=path, source=source, langs=present,
        line_offset=cat["offset"][order], line_length=cat["length"][order].astype(np.int32),
        line_number=number, line_lang=lang,
        group_start=np.concatenate(([0], np.cumsum(counts))).astype(np.int64))


def _worker_count(file_size: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, file_size // RANGE_MIN_BYTES))


def _split_ranges(fd: int, n_ranges: int) -> list[int]:
    """Byte offsets ``[0, ..., size]`` cutting the file into ``n_ranges`` runs of whole lines."""
    size = os.fstat(fd).st_size
    bounds = [0]
    for k in range(1, n_ranges):
        pos = max(size * k // n_ranges, bounds[-1])
        while pos < size:
            newline = os.pread(fd, 1 << 16, pos).find(b"\n")
            if newline >= 0:
                pos += newline + 1
                break
            pos += 1 << 16
        if bounds[-1] < min(pos, size) < size:
            bounds.append(pos)
    bounds.append(size)
    return bounds


@dataclass
class _RangeIndex:
    """What indexing one byte range of a file found; line numbers count from the range start."""

    offset: np.ndarray
    length: np.ndarray
    number: np.ndarray
    group: np.ndarray  # ids into groups
    lang: np.ndarray  # ids into langs
    groups: list[str]  # in order of first appearance
    langs: list[str]  # every language seen, including those filtered out
    n_lines: int  # lines in the range, blank ones included
    n_pairs: int  # non-blank lines
    error: tuple | None = None  # (message, line, field) of the first bad line


def _index_range(fd: int, start: int, end: int, path: str, allowed: frozenset | None) -> _RangeIndex:
    """Read and check the lines in bytes ``start:end`` (errors are returned, for the caller to
    number the line in the whole file)."""
    group_ids, lang_ids = _FirstSeen(), _FirstSeen()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("offset", "length", "number", "group", "lang")}
    n_lines = n_pairs = 0
    try:
        for lines, first_offset in _iter_blocks(fd, start, end):
            lengths = np.fromiter(map(len, lines), np.int64, len(lines))
            offsets = first_offset + np.cumsum(lengths + 1) - (lengths + 1)
            numbers = n_lines + 1 + np.arange(len(lines), dtype=np.int64)
            n_lines += len(lines)
            nonempty = np.flatnonzero(lengths)
            raws = list(filter(None, lines))  # the non-empty lines
            del lines
            groups, langs, kept = [], [], []
            # Small slices: parsed objects die while still in the CPU cache (3x faster).
            for first in range(0, len(raws), PARSE_SLICE):
                objs, rows = _parse_lines(raws[first:first + PARSE_SLICE],
                                          nonempty[first:first + PARSE_SLICE], numbers, path)
                if objs:
                    slice_groups, slice_langs = _check_fields(objs, numbers[rows], path)
                    groups += slice_groups
                    langs += slice_langs
                    kept.append(rows)
            if not kept:
                continue
            rows = np.concatenate(kept)
            n_pairs += len(rows)
            lang_of_row = lang_ids.ids(langs)
            if allowed is not None:
                wanted = np.isin(lang_of_row, [i for name, i in lang_ids.table.items() if name in allowed])
                groups = list(compress(groups, wanted.tolist()))
                rows, lang_of_row = rows[wanted], lang_of_row[wanted]
            parts["group"].append(group_ids.ids(groups))
            parts["lang"].append(lang_of_row)
            parts["offset"].append(offsets[rows])
            parts["length"].append(lengths[rows])
            parts["number"].append(numbers[rows])
    except InputError as e:
        empty = np.zeros(0, np.int64)
        return _RangeIndex(empty, empty, empty, empty, empty, [], [], n_lines, n_pairs,
                           (e.message, e.line, e.field))
    cat = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in parts.items()}
    return _RangeIndex(cat["offset"], cat["length"], cat["number"], group_ids.dense(cat["group"]),
                       lang_ids.dense(cat["lang"]), list(group_ids.table), list(lang_ids.table),
                       n_lines, n_pairs)


def _iter_blocks(fd: int, start: int, end: int) -> Iterator[tuple[list[bytes], int]]:
    """Yield ``(lines, byte offset of the first line)`` for the bytes ``start:end``."""
    pos, size = start, BLOCK_BYTES
    while pos < end:
        data = os.pread(fd, min(size, end - pos), pos)
        if not data:
            return
        lines = data.split(b"\n")
        if pos + len(data) < end:
            lines.pop()  # a partial line (or b""): read again with the next block
            if not lines:  # a line longer than the block
                size *= 2
                continue
        elif not lines[-1]:
            lines.pop()
        yield lines, pos
        pos += sum(map(len, lines)) + len(lines)


class _FirstSeen:
    """Numbers strings by the position of their first occurrence, in one C-level pass.

    Numbers increase with first appearance; :meth:`dense` turns them into ids 0..n-1 in that
    order, naming ``list(table)``.
    """

    def __init__(self):
        self.table: dict[str, int] = {}
        self.seen = 0

    def ids(self, values: list[str]) -> np.ndarray:
        numbers = np.fromiter(map(self.table.setdefault, values, count(self.seen)), np.int64, len(values))
        self.seen += len(values)
        return numbers

    def dense(self, numbers: np.ndarray) -> np.ndarray:
        """First-seen numbers -> ids 0..n-1, the positions of their strings in ``list(table)``."""
        return np.searchsorted(np.fromiter(self.table.values(), np.int64, len(self.table)), numbers)


def _parse_lines(raws: list[bytes], rows: np.ndarray, numbers: np.ndarray, path: str):
    """Parse non-empty lines -> ``(objects, their rows)``; skips blank lines, raises on bad ones."""
    try:
        objs = list(map(orjson.loads, raws))
        if set(map(type, objs)) == {dict}:
            return objs, rows
    except orjson.JSONDecodeError:
        pass
    objs, kept = [], []
    for raw, row in zip(raws, rows.tolist()):
        if raw.strip():
            objs.append(parse_json_line(raw, path, int(numbers[row])))
            kept.append(row)
    return objs, np.asarray(kept, np.int64)


_TEXT_FIELDS = ("group", "lang", "query", "positive")
_get_text_fields = itemgetter(*_TEXT_FIELDS)


def _check_fields(objs: list[dict], numbers: np.ndarray, path: str) -> tuple[list[str], list[str]]:
    """Check every object's fields; return their groups and languages."""
    try:
        texts = list(chain.from_iterable(map(_get_text_fields, objs)))  # group, lang, query, positive, ...
        negatives = list(map(dict.get, objs, repeat("negatives")))
        ok = (set(map(type, texts)) == {str} and all(texts)
              and set(map(type, negatives)) <= {list, type(None)}
              and set(map(type, chain.from_iterable(filter(None, negatives)))) <= {str})
    except KeyError:
        ok = False
    if not ok:
        _raise_first_bad_field(objs, numbers, path)
    return texts[0::4], texts[1::4]


def _raise_first_bad_field(objs: list[dict], numbers: np.ndarray, path: str):
    for obj, line in zip(objs, numbers.tolist()):
        for name in _TEXT_FIELDS:
            field(obj, name, str, path, line, nonempty=True)
        negatives = field(obj, "negatives", list, path, line, default=[])
        for i, negative in enumerate(negatives):
            if not isinstance(negative, str):
                raise InputError(f"item {i} is {type(negative).__name__}, expected a string",
                                 path, line, "negatives")
    raise AssertionError("a line failed the fast field check but passed the detailed one")


# ---------------------------------------------------------------- sampling

@dataclass
class _Pass:
    """One shuffled pass over a dataset's usable groups."""

    order: np.ndarray  # group ids, shuffled
    used: np.ndarray  # bool per position in order
    remaining_per_lang: np.ndarray  # unused groups having each language
    remaining_cross: int  # unused groups with two or more languages
    remaining: int
    head: int = 0  # every position before head is used


@dataclass
class _Dataset:
    index: PairsIndex
    usable: np.ndarray  # bool per group, for this strategy
    lang_row: np.ndarray  # [groups, langs] row of the group's line in that language, -1 if none
    has_lang: np.ndarray  # [groups, langs] bool
    n_langs: np.ndarray  # languages per group
    multilingual: np.ndarray  # bool per group: two or more languages
    mono_langs: np.ndarray  # languages that can fill a mono batch
    current: _Pass | None = None
    passes: int = 0  # passes started so far

    @property
    def name(self) -> str:
        return display_name(self.index.path)


@dataclass
class BatchSampler:
    """Draws batches from indexed datasets; see the module docstring for the definitions."""

    datasets: list[PairsIndex]
    strategy: str = "hybrid"
    alpha: float = 0.5
    batch_size: int = 100
    seed: int = 0
    dataset_sampling: str = "proportional"
    temperature: float = 1.0
    notes: list[str] = dataclass_field(default_factory=list)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise InputError(f"unknown strategy {self.strategy!r} (choose from {', '.join(STRATEGIES)})",
                             field="--strategy")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"must be within [0, 1], got {self.alpha}", field="--alpha")
        if self.batch_size < 1:
            raise InputError(f"must be at least 1, got {self.batch_size}", field="--batch-size")
        if self.dataset_sampling not in DATASET_SAMPLING:
            raise InputError(f"unknown dataset sampling {self.dataset_sampling!r} (choose from "
                             f"{', '.join(DATASET_SAMPLING)})", field="--dataset-sampling")
        if not self.temperature > 0:
            raise InputError(f"must be positive, got {self.temperature}", field="--temperature")
        if self.temperature != 1.0 and self.dataset_sampling != "temperature":
            raise InputError("only used with --dataset-sampling temperature", field="--temperature")
        if self.seed < 0:
            raise InputError(f"must be non-negative, got {self.seed}", field="--seed")
        if not self.datasets:
            raise InputError("no pairs files given")
        self.mono_share = {"mono": 1.0, "cross": 0.0, "hybrid": self.alpha}.get(self.strategy)
        self._data = [self._prepare(index) for index in self.datasets]
        sizes = np.array([d.usable.sum() for d in self._data], np.float64)
        self.epoch_steps = int(sum(size // self.batch_size for size in sizes))
        if self.dataset_sampling == "uniform":
            weights = np.ones_like(sizes)
        else:
            weights = sizes ** (self.temperature if self.dataset_sampling == "temperature" else 1.0)
        self.dataset_weights = weights / weights.sum()
        self._rng = np.random.Generator(np.random.PCG64(self.seed))

    def _prepare(self, index: PairsIndex) -> _Dataset:
        n_groups, n_langs_total, size = index.n_groups, len(index.langs), self.batch_size
        group_of_row = np.repeat(np.arange(n_groups), np.diff(index.group_start))
        lang_row = np.full((n_groups, n_langs_total), -1, np.int32)
        lang_row[group_of_row, index.line_lang] = np.arange(index.n_lines)
        has_lang = lang_row >= 0
        n_langs = np.diff(index.group_start)
        where = display_name(index.path)
        if n_groups < size:
            raise InputError(f"--batch-size {size} is larger than the number of groups ({n_groups})",
                             index.path)
        if self.strategy == "mixed":
            usable = np.ones(n_groups, bool)
            mono_langs = np.zeros(0, np.int64)
        else:
            per_lang = has_lang.sum(axis=0)
            mono_langs = np.flatnonzero(per_lang >= size) if self.mono_share > 0 else np.zeros(0, np.int64)
            too_few = [f"{index.langs[i]} ({per_lang[i]} groups)"
                       for i in np.flatnonzero(per_lang < size)] if self.mono_share > 0 else []
            if too_few and len(mono_langs):
                self.notes.append(f"{where}: left out of monolingual batches, fewer groups than "
                                  f"--batch-size {size}: {', '.join(too_few)}")
            if self.mono_share > 0 and not len(mono_langs):
                raise InputError(f"no language has --batch-size {size} groups for a monolingual "
                                 f"batch (most: {per_lang.max()})", index.path)
            n_cross = int((n_langs >= 2).sum())
            if self.mono_share < 1 and n_cross < size:
                what = "no cross-lingual pairs available (every group has one language)" if not n_cross \
                    else f"only {n_cross} groups have two or more languages"
                raise InputError(f"{what}; a cross-lingual batch needs --batch-size {size}", index.path)
            usable = np.zeros(n_groups, bool)
            if self.mono_share > 0:
                usable |= has_lang[:, mono_langs].any(axis=1)
            if self.mono_share < 1:
                usable |= n_langs >= 2
        return _Dataset(index, usable, lang_row, has_lang, n_langs, n_langs >= 2, mono_langs)

    @property
    def passes(self) -> list[int]:
        """Passes started so far over each dataset (a group is used at most once per pass)."""
        return [data.passes for data in self._data]

    # -- drawing

    def batches(self, steps: int) -> Iterator[dict]:
        """Yield ``steps`` batches (continuing where the previous call stopped)."""
        for _ in range(steps):
            yield self._next_batch()

    def _next_batch(self) -> dict:
        rng = self._rng
        data = self._data[rng.choice(len(self._data), p=self.dataset_weights)] \
            if len(self._data) > 1 else self._data[0]
        if self.strategy == "mixed":
            kind = "mixed"
        else:
            kind = "mono" if rng.random() < self.mono_share else "cross"
        if kind == "mono":
            lang = int(data.mono_langs[rng.integers(len(data.mono_langs))])
            groups = self._take(data, lambda p: p.remaining_per_lang[lang], data.has_lang[:, lang])
            query_rows = positive_rows = data.lang_row[groups, lang]
        elif kind == "cross":
            groups = self._take(data, lambda p: p.remaining_cross, data.multilingual)
            k = data.n_langs[groups]
            query_pick = rng.integers(0, k)
            positive_pick = rng.integers(0, k - 1)
            positive_pick += positive_pick >= query_pick
            start = data.index.group_start[groups]
            query_rows, positive_rows = start + query_pick, start + positive_pick
        else:
            groups = self._take(data, lambda p: p.remaining, None)
            query_rows = positive_rows = data.index.group_start[groups] + rng.integers(0, data.n_langs[groups])
        return self._assemble(data, kind, query_rows, positive_rows)

    def _take(self, data: _Dataset, remaining_of, eligible: np.ndarray | None) -> np.ndarray:
        """The next ``batch_size`` unused groups of the current pass that are ``eligible``."""
        size = self.batch_size
        if data.current is None or remaining_of(data.current) < size:
            data.current = self._new_pass(data)
        p = data.current
        n, width = len(p.order), 2 * size
        while True:
            end = min(p.head + width, n)
            fits = ~p.used[p.head:end]
            if eligible is not None:
                fits &= eligible[p.order[p.head:end]]
            positions = np.flatnonzero(fits)
            if len(positions) >= size or end == n:
                break
            width *= 4
        positions = positions[:size] + p.head
        p.used[positions] = True
        while p.head < n and p.used[p.head]:
            window = p.used[p.head:p.head + width]
            p.head += int(np.argmin(window)) if not window.all() else len(window)
        groups = p.order[positions]
        p.remaining -= size
        p.remaining_cross -= int(data.multilingual[groups].sum())
        p.remaining_per_lang -= data.has_lang[groups].sum(axis=0)
        return groups

    def _new_pass(self, data: _Dataset) -> _Pass:
        data.passes += 1
        order = self._rng.permutation(np.flatnonzero(data.usable))
        return _Pass(order=order, used=np.zeros(len(order), bool),
                     remaining_per_lang=data.has_lang[order].sum(axis=0),
                     remaining_cross=int(data.multilingual[order].sum()), remaining=len(order))

    def _assemble(self, data: _Dataset, kind: str, query_rows: np.ndarray,
                  positive_rows: np.ndarray) -> dict:
        index, langs = data.index, data.index.langs
        positives = index.read_rows(positive_rows)
        queries = positives if kind != "cross" else index.read_rows(query_rows)
        query_langs = [langs[i] for i in index.line_lang[query_rows].tolist()]
        positive_langs = [langs[i] for i in index.line_lang[positive_rows].tolist()]
        items = [{"group": p["group"], "query": q["query"], "query_lang": ql,
                  "positive": p["positive"], "positive_lang": pl,
                  "negatives": p.get("negatives") or []}
                 for q, p, ql, pl in zip(queries, positives, query_langs, positive_langs)]
        return {"kind": kind, "dataset": data.name, "items": items}


def check_run_length(steps: int | None, epochs: int | None) -> None:
    """Exactly one of ``steps`` / ``epochs``, at least 1 (checked before reading any file)."""
    if (steps is None) == (epochs is None):
        raise InputError("give exactly one of --steps N or --epochs E")
    for name, value in (("--steps", steps), ("--epochs", epochs)):
        if value is not None and value < 1:
            raise InputError(f"must be at least 1, got {value}", field=name)


def count_steps(sampler: BatchSampler, steps: int | None, epochs: int | None) -> int:
    """Exactly one of ``steps`` / ``epochs`` -> the number of batches to make."""
    check_run_length(steps, epochs)
    return steps if steps is not None else epochs * sampler.epoch_steps


@contextlib.contextmanager
def open_datasets(pair_files: Sequence[str], langs: Sequence[str] | None = None) -> Iterator[list[PairsIndex]]:
    """Index each pairs file (one dataset each); closes them on exit."""
    if list(pair_files).count(STDIO) > 1:
        raise InputError("stdin ('-') can be given only once")
    indexes: list[PairsIndex] = []
    try:
        for path in pair_files:
            indexes.append(index_pairs(path, langs))
        if langs:
            found = set(chain.from_iterable(ix.langs for ix in indexes))
            missing = [lang for lang in langs if lang not in found]
            if missing:
                raise InputError(f"languages not found in any pairs file: {','.join(missing)}",
                                 field="--langs")
        yield indexes
    finally:
        for index in indexes:
            index.close()


def make_batches(pair_files: Sequence[str], strategy: str = "hybrid", alpha: float = 0.5,
                 batch_size: int = 100, steps: int | None = None, epochs: int | None = None,
                 seed: int = 0, langs: Sequence[str] | None = None,
                 dataset_sampling: str = "proportional", temperature: float = 1.0) -> Iterator[dict]:
    """Yield batches ``{"step", "kind", "dataset", "items"}`` (see the module docstring)."""
    with open_datasets(pair_files, langs) as indexes:
        sampler = BatchSampler(indexes, strategy, alpha, batch_size, seed, dataset_sampling, temperature)
        for step, batch in enumerate(sampler.batches(count_steps(sampler, steps, epochs))):
            yield {"step": step, **batch}
