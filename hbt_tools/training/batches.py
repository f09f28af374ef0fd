"""Reading ``batches.jsonl`` (one training step per line) into tokenized tensors.

Each rank of a data-parallel run reads the same line and keeps its contiguous slice of the
items; passages are laid out as ``[positives of the slice] + [every negative of the slice]``.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch

from ..io import InputError, iter_lines, parse_json_line
from ..models.encoder import tokenize
from .batch_format import parse_batch
from .distributed import DistContext, item_slice


@dataclasses.dataclass
class TokenizedBatch:
    line: int                 # line number in the batches file (1-based)
    kind: str | None          # "mono", "cross", "mixed", ... as written by hbt-make-batches
    global_items: int         # items of the whole batch (all ranks)
    queries: dict[str, torch.Tensor]
    passages: dict[str, torch.Tensor]


class BatchTokenizer:
    """Turns items into padded token tensors with the model's prefixes and max lengths."""

    def __init__(self, tokenizer, settings, ctx: DistContext):
        self.tokenizer, self.settings, self.ctx = tokenizer, settings, ctx

    def __call__(self, kind, items: list[dict], path, line: int) -> TokenizedBatch:
        if len(items) < self.ctx.world_size:
            raise InputError(f"{len(items)} items cannot be shared by {self.ctx.world_size} "
                             "processes", path, line, "items")
        local = items[item_slice(len(items), self.ctx.rank, self.ctx.world_size)]
        s = self.settings
        queries = [s.query_prefix + it["query"] for it in local]
        passages = [s.passage_prefix + it["positive"] for it in local]
        passages += [s.passage_prefix + neg for it in local for neg in it.get("negatives") or ()]
        return TokenizedBatch(
            line=line, kind=kind, global_items=len(items),
            queries=tokenize(self.tokenizer, queries, s.max_query_length),
            passages=tokenize(self.tokenizer, passages, s.max_passage_length))


def read_batches(path, to_batch: BatchTokenizer, skip_lines: int = 0) -> Iterator[TokenizedBatch]:
    """Parse and tokenize each batch line after the first ``skip_lines`` (non-blank) lines."""
    lines = iter_lines(path)
    for _ in range(skip_lines):
        if next(lines, None) is None:
            return
    for line, raw in lines:
        obj = parse_json_line(raw, path, line)
        kind, items = parse_batch(obj, path, line)
        yield to_batch(kind, items, path, line)


def prefetch(batches: Iterator[TokenizedBatch]) -> Iterator[TokenizedBatch]:
    """Read and tokenize the next batch in a background thread while the current step runs."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hbt-prefetch") as pool:
        pending = pool.submit(next, batches, None)
        while True:
            batch = pending.result()
            if batch is None:
                return
            pending = pool.submit(next, batches, None)
            yield batch
