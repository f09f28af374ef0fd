"""hbt-train's forward for BERT / XLM-R: no work on padding, fast dropout masks.

transformers' ``BertModel`` pads every sequence of a batch to the longest one: on XQuAD-R's
(query, sentence) pairs 35-50% of the tokens of a training step were padding, and every linear
layer, layer norm, GELU and dropout mask paid for them. Here those run on the real tokens only,
packed into one ``[tokens, hidden]`` matrix; attention runs per group of sequences of similar
length (padded within the group, :func:`length_groups`); dropout uses :mod:`.dropout`. The
weights are the transformers model's own modules and parameters, so saving, checkpoints, the
optimizer and gradient all-reduce see no difference. The computation is transformers' (its
modules, GELU, residuals in the same dtypes under autocast; attention as its eager path, softmax
in fp32) and tests/test_packed_encoder.py checks outputs and gradients against it.

``BiEncoder`` packs on the CPU only: on an H200 the per-group small ops and host syncs made a
training step 7-15x slower than transformers' padded forward (``encoder.py``). The function
itself is device-agnostic; its eval-mode test runs on CUDA too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from .cpu_attention import cpu_attention
from .dropout import dropout
from .embedding_grad import embedding_rows
from .fast_encoder import position_ids
from .folder import is_plain_bert

# Fixed cost of one more attention group, in (head x query x key) score elements: the ~20 extra
# small ops per layer (forward and backward) cost about as much as this many elements.
GROUP_OVERHEAD = 2 ** 16


def supports_packing(model) -> bool:
    return (type(model).__name__ in ("BertModel", "XLMRobertaModel")
            and is_plain_bert(model.config.to_dict()))


def length_groups(lengths: list[int], heads: int) -> list[list[int]]:
    """Sequences (indices into ``lengths``) cut into groups that attention pads to their own
    longest member: sorted longest first, cut where the score elements saved (``heads x n x
    L^2`` per group) outweigh :data:`GROUP_OVERHEAD` (exact dynamic programme over the cuts)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    longest = np.array([lengths[i] for i in order], dtype=np.float64)
    cost = np.zeros(len(order) + 1)  # cost[j]: best cost of the first j sequences
    cut = np.zeros(len(order) + 1, dtype=np.int64)
    for end in range(1, len(order) + 1):
        starts = np.arange(end)
        options = cost[:end] + heads * (end - starts) * longest[:end] ** 2 + GROUP_OVERHEAD
        cut[end] = int(np.argmin(options))
        cost[end] = options[cut[end]]
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


@dataclass
class Group:
    count: int              # sequences
    length: int             # padded length within the group
    tokens: slice           # its rows of the packed matrix
    positions: torch.Tensor  # row of each packed token in the group's [count * length] layout
    pad_keys: torch.Tensor  # [count, 1, 1, length], True at padding


class PackedLayout:
    """Where the real tokens of a padded ``[batch, length]`` batch sit when packed: sequence by
    sequence, in :func:`length_groups` order."""

    def __init__(self, attention_mask: torch.Tensor, heads: int):
        mask = attention_mask.bool()
        self.batch, self.length = mask.shape
        device = mask.device
        lengths = mask.sum(1)
        counts = lengths.tolist()  # one device sync; group sizes below come from it
        groups = length_groups(counts, heads)
        order = torch.tensor([i for group in groups for i in group], device=device)
        ordered = lengths[order]
        total = sum(counts)
        firsts = torch.cumsum(ordered, 0) - ordered  # packed row of each sequence's first token
        within = torch.arange(total, device=device) - torch.repeat_interleave(firsts, ordered)
        # real tokens in row-major order, then reordered sequence by sequence
        real_flat = mask.flatten().nonzero().squeeze(1)
        starts = torch.cumsum(lengths, 0) - lengths
        self.token_index = real_flat[torch.repeat_interleave(starts[order], ordered) + within]
        self.groups, row, first = [], 0, 0
        for group in groups:
            count = len(group)
            group_lengths = ordered[first:first + count]
            length = counts[group[0]]  # the longest: groups are sorted longest first
            size = sum(counts[i] for i in group)
            rank = torch.repeat_interleave(torch.arange(count, device=device), group_lengths)
            keys = torch.arange(length, device=device)
            self.groups.append(Group(
                count, length, slice(row, row + size),
                rank * length + within[row:row + size],
                (keys[None, :] >= group_lengths[:, None])[:, None, None, :]))
            row, first = row + size, first + count

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """``[batch, length, ...]`` -> ``[tokens, ...]``."""
        return padded.flatten(0, 1)[self.token_index]

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``[tokens, hidden]`` -> ``[batch, length, hidden]``, zeros at padding."""
        out = packed.new_zeros(self.batch * self.length, packed.shape[-1])
        return out.index_copy(0, self.token_index, packed).view(self.batch, self.length, -1)


def attention(qkv: torch.Tensor, layout: PackedLayout, heads: int, p: float,
              training: bool) -> torch.Tensor:
    """Multi-head self-attention of packed ``[tokens, 3 x hidden]`` projections, group by
    group. Training: the softmax in fp32, then :mod:`.dropout` on the probabilities as
    transformers does (CPU SDPA would draw the mask serially); eval mode: :mod:`.cpu_attention`
    where it applies (bf16 on an AVX512-BF16 CPU), else SDPA."""
    width = qkv.shape[1] // 3
    head_dim = width // heads
    outputs = []
    for g in layout.groups:
        padded = qkv.new_zeros(g.count * g.length, 3 * width).index_copy(
            0, g.positions, qkv[g.tokens])
        # eval mode only: gradient caching's no-grad pass (train mode) must compute what its
        # second pass with gradients computes
        context = None if training else cpu_attention(
            padded.view(g.count, g.length, -1), ~g.pad_keys[:, 0, 0, :], heads)
        if context is None:
            q, k, v = padded.view(g.count, g.length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
            if training and p > 0:
                scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(head_dim))
                scores = scores.masked_fill(g.pad_keys, float("-inf"))
                probs = torch.softmax(scores, -1, dtype=torch.float32).to(v.dtype)
                context = torch.matmul(dropout(probs, p, True), v)
            else:
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=~g.pad_keys)
            context = context.transpose(1, 2)
        outputs.append(context.reshape(g.count * g.length, width).index_select(0, g.positions))
    return torch.cat(outputs)


def packed_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """``model(input_ids=..., attention_mask=...)`` for a :func:`supports_packing` model, with
    its dropout when ``model.training``; ``last_hidden_state`` is zero at padding."""
    config, training = model.config, model.training
    hidden_p, attention_p = config.hidden_dropout_prob, config.attention_probs_dropout_prob
    heads = config.num_attention_heads
    layout = PackedLayout(attention_mask, heads)
    emb = model.embeddings
    padding_idx = emb.padding_idx if config.model_type == "xlm-roberta" else None
    x = (embedding_rows(emb.word_embeddings.weight, layout.pack(input_ids))
         + emb.position_embeddings(layout.pack(position_ids(input_ids, padding_idx)))
         + emb.token_type_embeddings.weight[0])
    x = dropout(emb.LayerNorm(x), hidden_p, training)
    for layer in model.encoder.layer:
        self_attention = layer.attention.self
        projections = (self_attention.query, self_attention.key, self_attention.value)
        qkv = F.linear(x, torch.cat([m.weight for m in projections]),
                       torch.cat([m.bias for m in projections]))
        context = attention(qkv, layout, heads, attention_p, training)
        out = layer.attention.output
        x = out.LayerNorm(dropout(out.dense(context), hidden_p, training) + x)
        hidden = F.gelu(layer.intermediate.dense(x))
        x = layer.output.LayerNorm(dropout(layer.output.dense(hidden), hidden_p, training) + x)
    last = layout.unpack(x)
    pooled = model.pooler(last) if model.pooler is not None else None
    return SimpleNamespace(last_hidden_state=last, pooler_output=pooled)
