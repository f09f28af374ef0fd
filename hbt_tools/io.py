"""Shared plumbing for every command: input streams, JSONL, atomic outputs, embeddings.

Errors in user input are raised as :class:`InputError`, which names the file, the line (or row)
and the field; the CLI layer (:mod:`hbt_tools.cli`) turns it into one line on stderr and exit 2.
This module imports neither torch nor transformers.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import sys
import tempfile
from typing import IO, Any, Iterable, Iterator

import orjson

STDIO = "-"


class InputError(Exception):
    """Bad user input: a one-line message naming the file, line and field."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        super().__init__(message)
        self.message, self.path, self.line, self.field = message, path, line, field

    def __reduce__(self):  # whole, across a process boundary (hbt-encode's tokenizer process)
        return type(self), (self.message, self.path, self.line, self.field)

    def __str__(self) -> str:
        where = display_name(self.path) if self.path is not None else ""
        if self.line is not None:
            where += f":{self.line}"
        field = f"field '{self.field}': " if self.field else ""
        return f"{where}: {field}{self.message}" if where else f"{field}{self.message}"


def display_name(path: str | os.PathLike | None) -> str:
    return "<stdin>" if path in (None, STDIO) else os.fspath(path)


# ---------------------------------------------------------------- inputs

def open_file(path: str | os.PathLike, buffering: int = 1 << 20) -> IO[bytes]:
    """Open a file for binary reading; a missing or unreadable file is an InputError."""
    try:
        return open(path, "rb", buffering=buffering)
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a file", path) from None
    except PermissionError:
        raise InputError("permission denied", path) from None


@contextlib.contextmanager
def open_input(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a binary input stream; ``-`` is stdin, ``.gz`` is decompressed on the fly."""
    if path == STDIO:
        yield sys.stdin.buffer
        return
    path = os.fspath(path)
    raw = open_file(path)
    fh = gzip.open(raw, "rb") if path.endswith(".gz") else raw
    with raw, fh:
        yield fh


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw_line)`` for non-blank lines (1-based numbers, newline stripped)."""
    with open_input(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            raw = raw.rstrip(b"\r\n")
            if raw.strip():
                yield lineno, raw


def decode_text(raw: bytes, path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not valid UTF-8 (byte {e.start})", path, lineno) from None


def parse_json_line(raw: bytes, path, lineno: int) -> dict:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        msg = "not valid UTF-8" if "utf-8" in str(e).lower() else f"invalid JSON ({e})"
        raise InputError(msg, path, lineno) from None
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", path, lineno)
    return obj


def iter_jsonl(path: str | os.PathLike, allow_empty: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each JSON object line of a JSONL file (or stdin)."""
    seen = False
    for lineno, raw in iter_lines(path):
        seen = True
        yield lineno, parse_json_line(raw, path, lineno)
    if not seen and not allow_empty:
        raise InputError("empty input: no JSON lines", path)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list",
               dict: "an object", bool: "true/false"}


def field(obj: dict, name: str, kind: type | tuple = str, path=None, line=None,
          default: Any = ..., nonempty: bool = False) -> Any:
    """Fetch ``obj[name]``, checking its type; raises InputError naming file, line and field."""
    if name not in obj or obj[name] is None:
        if default is not ...:
            return default
        raise InputError("missing", path, line, name)
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if kinds == (float,) and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        want = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise InputError(f"expected {want}, got {type(value).__name__}", path, line, name)
    if kinds == (float,) and not math.isfinite(value):
        raise InputError("not a finite number", path, line, name)
    if nonempty and isinstance(value, (str, list)) and not value:
        raise InputError("empty", path, line, name)
    return value


def parse_langs(spec: str | None) -> list[str] | None:
    """``"ar,de, en"`` -> ``["ar", "de", "en"]``; None or empty -> None (all languages)."""
    if not spec:
        return None
    langs = [x.strip() for x in spec.split(",") if x.strip()]
    return langs or None


# ---------------------------------------------------------------- outputs

@contextlib.contextmanager
def atomic_output(path: str | os.PathLike | None, mode: str = "wb") -> Iterator[IO]:
    """Write to ``path`` through a temporary file renamed into place only on success.

    ``None`` or ``-`` writes to stdout. On any exception (or a kill) the final name is never a
    truncated file: the temporary file is removed (or, after ``kill -9``, left as a hidden
    ``.NAME.tmp*`` file beside it).
    """
    if path is None or path == STDIO:
        out = sys.stdout.buffer if "b" in mode else sys.stdout
        yield out
        out.flush()
        return
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dumps_jsonl(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def write_jsonl(fh: IO[bytes], rows: Iterable[Any]) -> int:
    n = 0
    for row in rows:
        fh.write(dumps_jsonl(row))
        n += 1
    return n


# ---------------------------------------------------------------- embeddings

def sidecar_path(npy_path: str | os.PathLike) -> str:
    """``NAME.npy`` -> ``NAME.ids.jsonl``."""
    p = os.fspath(npy_path)
    return (p[:-4] if p.endswith(".npy") else p) + ".ids.jsonl"


def read_sidecar(path: str) -> list[dict]:
    rows, seen = [], set()
    for lineno, obj in iter_jsonl(path):
        rid = field(obj, "id", (str, int), path, lineno)
        rid = str(rid)
        if rid in seen:
            raise InputError(f"duplicate id {rid!r}", path, lineno, "id")
        seen.add(rid)
        lang = field(obj, "lang", str, path, lineno, default=None, nonempty=True)
        rows.append({"id": rid, "lang": lang})
    return rows


def load_embeddings(npy_path: str | os.PathLike, mmap: bool = False, check_finite: bool = True):
    """Load ``NAME.npy`` and its ``NAME.ids.jsonl`` sidecar -> ``(matrix, rows)``.

    Rows are dicts with ``id`` (str) and ``lang`` (str or None). Never unpickles.
    """
    import numpy as np

    npy_path = os.fspath(npy_path)
    try:
        with open(npy_path, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":
                raise InputError("not a .npy file (no NumPy header)", npy_path)
        emb = np.load(npy_path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise InputError("no such file", npy_path) from None
    except (ValueError, OSError) as e:
        raise InputError(f"not a .npy array ({e})", npy_path) from None
    if emb.ndim != 2:
        raise InputError(f"expected a 2-d array (rows x dim), got shape {emb.shape}", npy_path)
    if emb.dtype not in (np.float32, np.float16):
        raise InputError(f"expected float32 or float16, got {emb.dtype}", npy_path)
    side = sidecar_path(npy_path)
    rows = read_sidecar(side)
    if len(rows) != emb.shape[0]:
        raise InputError(f"{emb.shape[0]} rows in {npy_path} but {len(rows)} lines here", side)
    if check_finite:
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"row {row} (id {rows[row]['id']!r}) holds NaN or inf", npy_path)
    return emb, rows


def save_embeddings(npy_path: str | os.PathLike, emb, rows: Iterable[dict]) -> None:
    """Write ``NAME.npy`` and ``NAME.ids.jsonl`` atomically (sidecar first, array last)."""
    import numpy as np

    with atomic_output(sidecar_path(npy_path)) as fh:
        write_jsonl(fh, ({"id": r["id"], "lang": r.get("lang")} for r in rows))
    with atomic_output(npy_path) as fh:
        np.save(fh, np.ascontiguousarray(emb), allow_pickle=False)

