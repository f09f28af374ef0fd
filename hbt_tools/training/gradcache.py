"""Gradient caching (GradCache; Gao, Zhang, Han & Callan 2021, "Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup", arXiv 2101.06983).

The contrastive loss couples every query with every passage, so the batch cannot simply be split
into gradient-accumulation steps. Instead:

1. encode every chunk of queries and passages **without** a graph, remembering the RNG state
   before each chunk;
2. compute the loss on the (detached) embeddings and its gradient with respect to them;
3. re-encode each chunk **with** a graph, replaying the remembered RNG state so dropout draws
   the same masks, and backpropagate the cached embedding gradient through that chunk alone.

Peak activation memory is that of one chunk; the parameter gradients equal those of the plain
loss (up to float rounding). The RNG ends where step 1 left it, so a run stays deterministic.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

Tokens = dict[str, torch.Tensor]
LossOfEmbeddings = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def trim_padding(tokens: Tokens) -> Tokens:
    """Drop the columns that are padding in every row (pad to the longest row only)."""
    keep = tokens["attention_mask"].bool().any(0)
    if bool(keep.all()):
        return tokens
    return {k: v[:, keep] for k, v in tokens.items()}


@dataclasses.dataclass
class Chunks:
    """A batch's rows grouped by length, each group trimmed to its longest row."""

    parts: list[Tokens]
    inverse: torch.Tensor  # cat(encoded parts)[inverse] is back in the batch's row order

    def sizes(self) -> list[int]:
        return [len(part["input_ids"]) for part in self.parts]

    def to(self, device: torch.device) -> "Chunks":
        """These chunks on ``device``. Chunks are cut on the host: sorting rows and trimming
        padding there costs no GPU synchronisation (on a GPU each trim would wait for the
        device); the copies are then non-blocking, from pinned memory."""
        if device.type != "cuda":
            return self

        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.pin_memory().to(device, non_blocking=True)

        return Chunks([{k: move(v) for k, v in part.items()} for part in self.parts],
                      move(self.inverse))


def split_chunks(tokens: Tokens, chunk_size: int | None) -> Chunks:
    """Chunks of at most ``chunk_size`` rows (all rows when None), longest rows first, so
    that each chunk's padding is small."""
    lengths = tokens["attention_mask"].sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    size = chunk_size or len(order)
    parts = [trim_padding({k: v[order[i: i + size]] for k, v in tokens.items()})
             for i in range(0, len(order), size)]
    return Chunks(parts, torch.argsort(order))


def encode_chunks(encoder: torch.nn.Module, chunks: Chunks) -> torch.Tensor:
    """Embeddings of every row, in the batch's order (with a graph if grad is enabled)."""
    return torch.cat([encoder(**part) for part in chunks.parts])[chunks.inverse]


class DeviceRng:
    """Capture / restore the torch RNG that dropout on ``device`` draws from."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def capture(self):
        return torch.cuda.get_rng_state(self.device) if self.cuda else torch.get_rng_state()

    def restore(self, state) -> None:
        if self.cuda:
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)


def plain_step(encoder: torch.nn.Module, query_chunks: Chunks, passage_chunks: Chunks,
               loss_of_embeddings: LossOfEmbeddings) -> torch.Tensor:
    """Encode both sides with one graph, backpropagate the loss; returns the detached loss."""
    loss = loss_of_embeddings(encode_chunks(encoder, query_chunks),
                              encode_chunks(encoder, passage_chunks))
    loss.backward()
    return loss.detach()


def cached_step(encoder: torch.nn.Module, query_chunks: Chunks, passage_chunks: Chunks,
                loss_of_embeddings: LossOfEmbeddings, device: torch.device) -> torch.Tensor:
    """GradCache: the same parameter gradients as :func:`plain_step` on the same chunks, with
    the activation memory of one chunk. Returns the detached loss."""
    rng = DeviceRng(device)
    chunks = query_chunks.parts + passage_chunks.parts
    states, embeddings = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(rng.capture())
            embeddings.append(encoder(**chunk))
    after_first_pass = rng.capture()

    n_query_chunks = len(query_chunks.parts)
    queries = torch.cat(embeddings[:n_query_chunks]).requires_grad_()
    passages = torch.cat(embeddings[n_query_chunks:]).requires_grad_()
    loss = loss_of_embeddings(queries[query_chunks.inverse], passages[passage_chunks.inverse])
    loss.backward()
    cached = list(queries.grad.split(query_chunks.sizes())) + \
        list(passages.grad.split(passage_chunks.sizes()))

    for chunk, state, grad in zip(chunks, states, cached):
        rng.restore(state)
        encoder(**chunk).backward(grad)
    rng.restore(after_first_pass)
    return loss.detach()
