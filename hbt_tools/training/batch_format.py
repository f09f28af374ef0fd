"""The ``batches.jsonl`` format (one training step per line), checked without torch::

    {"step": 0, "kind": "mono", "items": [{"group": "g1", "query": "...", "query_lang": "de",
     "positive": "...", "positive_lang": "de", "negatives": ["...", ...]}, ...]}

``items`` must be a non-empty list; ``query`` and ``positive`` strings; ``negatives`` (optional) a
list of strings; ``query_lang``, ``positive_lang`` and ``kind`` (optional) non-empty strings.
Errors name the file, line and field, e.g. ``batches.jsonl:12: field 'items[3].query': missing``.
"""
from __future__ import annotations

from ..io import InputError, field, iter_lines, parse_json_line


def _item_field(item, index: int, name: str, kind, path, line, **kw):
    try:
        return field(item, name, kind, path, line, **kw)
    except InputError as e:
        e.field = f"items[{index}].{name}"
        raise


def parse_batch(obj: dict, path, line: int) -> tuple[str | None, list[dict]]:
    """Validate one batch line; returns ``(kind, items)``."""
    kind = field(obj, "kind", str, path, line, default=None)
    items = field(obj, "items", list, path, line, nonempty=True)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(f"expected an object, got {type(item).__name__}", path, line,
                             f"items[{i}]")
        _item_field(item, i, "query", str, path, line)
        _item_field(item, i, "positive", str, path, line)
        for name in ("query_lang", "positive_lang"):
            _item_field(item, i, name, str, path, line, default=None, nonempty=True)
        negatives = _item_field(item, i, "negatives", list, path, line, default=[])
        if not all(isinstance(n, str) for n in negatives):
            raise InputError("expected a list of strings", path, line, f"items[{i}].negatives")
    return kind, items


def check_batch_file(path, limit: int | None = None) -> int:
    """Validate the first ``limit`` (default: all) batch lines of a file before any training,
    so that a bad line fails the run at once, not hours in; returns the number checked."""
    count = 0
    for line, raw in iter_lines(path):
        if limit is not None and count >= limit:
            break
        parse_batch(parse_json_line(raw, path, line), path, line)
        count += 1
    return count
