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


def split_chunks(tokens: Tokens, chunk_size: int | None) -> list[Tokens]:
    """Row chunks of at most ``chunk_size`` (all rows when None), each trimmed to its longest."""
    n = tokens["input_ids"].shape[0]
    size = chunk_size or n
    return [trim_padding({k: v[i: i + size] for k, v in tokens.items()}) for i in range(0, n, size)]


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


def plain_step(encoder: torch.nn.Module, query_tokens: Tokens, passage_tokens: Tokens,
               loss_of_embeddings: LossOfEmbeddings) -> torch.Tensor:
    """Encode both sides with a graph, backpropagate the loss; returns the detached loss."""
    queries = encoder(**trim_padding(query_tokens))
    passages = encoder(**trim_padding(passage_tokens))
    loss = loss_of_embeddings(queries, passages)
    loss.backward()
    return loss.detach()


def cached_step(encoder: torch.nn.Module, query_chunks: list[Tokens],
                passage_chunks: list[Tokens], loss_of_embeddings: LossOfEmbeddings,
                device: torch.device) -> torch.Tensor:
    """GradCache: the same parameter gradients as :func:`plain_step` over the concatenated
    chunks, with the activation memory of one chunk. Returns the detached loss."""
    rng = DeviceRng(device)
    chunks = query_chunks + passage_chunks
    states, embeddings = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(rng.capture())
            embeddings.append(encoder(**chunk))
    after_first_pass = rng.capture()

    n_query_chunks = len(query_chunks)
    queries = torch.cat(embeddings[:n_query_chunks]).requires_grad_()
    passages = torch.cat(embeddings[n_query_chunks:]).requires_grad_()
    loss = loss_of_embeddings(queries, passages)
    loss.backward()
    cached = list(queries.grad.split([len(e) for e in embeddings[:n_query_chunks]])) + \
        list(passages.grad.split([len(e) for e in embeddings[n_query_chunks:]]))

    for chunk, state, grad in zip(chunks, states, cached):
        rng.restore(state)
        encoder(**chunk).backward(grad)
    rng.restore(after_first_pass)
    return loss.detach()
