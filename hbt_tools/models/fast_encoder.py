"""hbt-encode's fast path: BERT-architecture encoders run without importing transformers.

Importing transformers costs hbt-encode 2-3 s of every start (it pulls in torch._dynamo,
torch.distributed, sympy, jinja2, ...): more than encoding a few hundred passages. For the
plain BERT architecture (mE5, LaBSE, mBERT) and XLM-R, this module does the same computation as
transformers' ``BertModel`` / ``XLMRobertaModel`` in eval mode, from the folder's config.json
and model.safetensors, with tokenizer.json run by the ``tokenizers`` library
(:mod:`.fast_tokenizer`). Anything else (other families, remote code, sharded or .bin
weights) goes through transformers.
tests/test_fast_encoder.py checks outputs and token ids against transformers.
"""
from __future__ import annotations

import functools
import os
import platform
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from .add_layer_norm import add_layer_norm
from .bert_weights import check_complete, weight_prefix
from .cpu_attention import cpu_attention
from .folder import load_failure


def position_ids(input_ids: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
    """BERT numbers positions 0, 1, ... in every row (``padding_idx`` None); XLM-R from
    ``padding_idx + 1``, skipping padding tokens, which keep ``padding_idx``."""
    batch, length = input_ids.shape
    if padding_idx is None:
        return torch.arange(length, device=input_ids.device).expand(batch, length)
    real = (input_ids != padding_idx).long()
    return torch.cumsum(real, dim=1) * real + padding_idx


@functools.cache
def onednn_bf16_linear() -> bool:
    """Whether oneDNN's fused linear op runs bf16 here (x86 CPUs with AVX-512 or AMX; on ARM
    PyTorch's oneDNN sits on another backend, not tried)."""
    return (platform.machine().lower() in ("x86_64", "amd64")
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class FastBertEncoder(torch.nn.Module):
    """``BertModel`` / ``XLMRobertaModel`` forward for inference (no dropout, absolute positions)."""

    def __init__(self, config: dict, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.config = SimpleNamespace(**config, is_encoder_decoder=False)
        self.heads = config["num_attention_heads"]
        self.eps = config.get("layer_norm_eps", 1e-12)
        # XLM-R numbers positions from padding_idx + 1 and skips padding; BERT from 0
        self.position_offset = config.get("pad_token_id", 1) if \
            config["model_type"] == "xlm-roberta" else None
        self.layers = config["num_hidden_layers"]
        weights = dict(weights)
        for i in range(self.layers):  # one matmul for query, key and value
            p = f"encoder.layer.{i}.attention.self"
            for part in ("weight", "bias"):
                weights[f"{p}.qkv.{part}"] = torch.cat([weights.pop(f"{p}.{name}.{part}")
                                                        for name in ("query", "key", "value")])
        # The word-embedding table (96M of mE5-small's 118M weights) is kept out of the module's
        # tensors: casting it to bf16 was ~0.5 s of every start, while a forward pass reads a few
        # thousand rows. Rows are cast after the lookup instead: the same numbers, since a cast
        # is per element. See _apply for how .to() still reaches it.
        self.word_embeddings = weights.pop("embeddings.word_embeddings.weight")
        self.weights = torch.nn.ParameterDict(
            {name.replace(".", "__"): torch.nn.Parameter(tensor, requires_grad=False)
             for name, tensor in weights.items()})

    def _apply(self, fn, *args, **kwargs):
        """``.to(device)`` moves the word-embedding table too; a dtype change applies to the
        looked-up rows (see __init__)."""
        super()._apply(fn, *args, **kwargs)
        table = self.word_embeddings
        target = fn(torch.empty(0, dtype=table.dtype, device=table.device))
        self.word_embeddings = table.to(device=target.device)
        return self

    def w(self, name: str) -> torch.Tensor:
        return self.weights[name.replace(".", "__")]

    def has(self, name: str) -> bool:
        return name.replace(".", "__") in self.weights

    def _norm(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w(f"{prefix}.weight"), self.w(f"{prefix}.bias"),
                            self.eps)

    def _add_norm(self, x: torch.Tensor, residual: torch.Tensor, prefix: str) -> torch.Tensor:
        """``layer_norm(x + residual)``: one C pass in bf16 where it runs (sum kept in fp32)."""
        out = add_layer_norm(x, residual, self.w(f"{prefix}.weight"), self.w(f"{prefix}.bias"),
                             self.eps)
        return self._norm(x + residual, prefix) if out is None else out

    def _linear(self, x: torch.Tensor, prefix: str, activation: str = "none") -> torch.Tensor:
        """``activation(x @ W.T + b)``, activation "none" or "gelu" (erf, as BERT's)."""
        weight, bias = self.w(f"{prefix}.weight"), self.w(f"{prefix}.bias")
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and onednn_bf16_linear():
            # oneDNN adds the bias (and GELU) in the matmul's own output pass, on the fp32
            # accumulator: the bias-only result is bit for bit F.linear's, up to 35% faster on
            # AMX; GELU before rounding to bf16 is more accurate than F.gelu afterwards.
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "none")
        out = F.linear(x, weight, bias)
        return F.gelu(out) if activation == "gelu" else out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        batch, length = input_ids.shape
        positions = position_ids(input_ids, self.position_offset)
        position_table = self.w("embeddings.position_embeddings.weight")
        x = (self.word_embeddings[input_ids].to(position_table.dtype)
             + position_table[positions]
             + self.w("embeddings.token_type_embeddings.weight")[0])
        x = self._norm(x, "embeddings.LayerNorm")
        attend = attention_mask.bool()[:, None, None, :]
        head_dim = x.shape[-1] // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            qkv = self._linear(x, f"{p}.attention.self.qkv")
            context = cpu_attention(qkv, attention_mask, self.heads)
            if context is None:
                q, k, v = qkv.view(batch, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
                context = context.transpose(1, 2).reshape(batch, length, -1)
            x = self._add_norm(self._linear(context, f"{p}.attention.output.dense"), x,
                               f"{p}.attention.output.LayerNorm")
            hidden = self._linear(x, f"{p}.intermediate.dense", "gelu")
            x = self._add_norm(self._linear(hidden, f"{p}.output.dense"), x,
                               f"{p}.output.LayerNorm")
        pooled = torch.tanh(self._linear(x[:, 0], "pooler.dense")) \
            if self.has("pooler.dense.weight") else None
        return SimpleNamespace(last_hidden_state=x, pooler_output=pooled)


def load_fast_encoder(folder: str, config: dict) -> FastBertEncoder:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(os.path.join(folder, "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise load_failure(e, folder) from None
    prefix = weight_prefix(weights)
    weights = {name[len(prefix):]: tensor for name, tensor in weights.items()}
    check_complete(weights, config, folder)
    return FastBertEncoder(config, weights)
