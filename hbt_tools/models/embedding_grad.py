"""Word-embedding lookups whose backward touches only the rows a batch used.

Multilingual encoders have big word-embedding tables (250k x 384: 96M of mE5-small's 118M
weights). Autograd's embedding backward builds a dense zero gradient of the whole table for
every lookup: an hbt-train step (queries and passages looked up separately) zero-filled two
384 MB tensors in freshly mapped pages and added one to the other, 0.4-0.7 s of a ~1.5 s step
on this CPU. Here each weight keeps one dense gradient tensor between steps: every backward adds
its rows into ``weight.grad`` in place, and when a step begins (``weight.grad`` is None after
``zero_grad(set_to_none=True)``) the kept tensor's rows written last time are zeroed and it
becomes ``weight.grad`` again; if anything else wrote to it in place (a gradient all-reduce,
clipping: its version counter says so) the whole tensor is zeroed instead. It is reused only
while nothing else refers to it or its storage (else a new one is made), so a gradient a caller
kept from an earlier step never changes. The optimizer sees the same dense gradient as with
``F.embedding``.
"""
from __future__ import annotations

import sys

import torch


class _KeptGradient:
    def __init__(self, like: torch.Tensor):
        self.grad = torch.zeros_like(like)
        self.written: list[torch.Tensor] = []
        self.version = self.grad._version  # in-place writes bump it: ours are recorded

    def reusable(self) -> bool:
        use_count = getattr(torch._C, "_storage_Use_Count", None)
        if use_count is None:  # a private API: without it, never reuse
            return False
        # 2 = this object's attribute + getrefcount's argument; storage: our tensor + the
        # temporary storage object
        return (sys.getrefcount(self.grad) <= 2
                and use_count(self.grad.untyped_storage()._cdata) <= 2)

    def reset(self) -> torch.Tensor:
        if self.grad._version != self.version:  # written by others too (a gradient all-reduce,
            self.grad.zero_()                    # clipping): rows we did not add may be set
        elif self.written:
            self.grad.index_fill_(0, torch.cat(self.written), 0)
        self.written = []
        self.version = self.grad._version
        return self.grad


def add_row_gradients(weight: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> None:
    """``weight.grad[ids] += rows`` (repeated ids add up), starting a gradient if none."""
    rows = rows.to(weight.dtype)
    kept = getattr(weight, "_hbt_kept_gradient", None)
    if weight.grad is None:
        if kept is None or not kept.reusable():
            kept = _KeptGradient(weight)
            weight._hbt_kept_gradient = kept
        weight.grad = kept.reset()
    # rows are tracked only while the kept tensor is the gradient and nobody else wrote to it
    tracked = (kept is not None and weight.grad is kept.grad
               and weight.grad._version == kept.version)
    weight.grad.index_add_(0, ids, rows)
    if tracked:
        kept.written.append(ids)
        kept.version = weight.grad._version


class _EmbeddingRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, ids):
        ctx.weight = weight
        ctx.save_for_backward(ids)
        return weight.index_select(0, ids)

    @staticmethod
    def backward(ctx, rows):
        if ctx.needs_input_grad[0]:
            add_row_gradients(ctx.weight, ctx.saved_tensors[0], rows)
        return None, None


def embedding_rows(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``F.embedding(ids, weight)`` for 1-d ``ids``, with the row-wise backward above (no
    padding_idx, max_norm or scaling: BERT / XLM-R use none at training time)."""
    return _EmbeddingRows.apply(weight, ids)
