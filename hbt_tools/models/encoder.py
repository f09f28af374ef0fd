"""The shared-weight bi-encoder: load any supported family, pool, normalise, save.

Families: XLM-R, BERT / mBERT / LaBSE, mE5 (BERT architecture), and the encoders of mBART and
mT5 (their decoders are kept in the saved folder but never run).
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch

from ..io import InputError
from .fast_tokenizer import FastTokenizer
from .folder import (InferenceFolder, check_model_folder, inference_folder, load_failure,
                     resolve_model_path, retrieval_settings)
from .native import cpu_flags
from .packed_encoder import packed_forward, supports_packing
from .settings import RetrievalSettings


class BiEncoder(torch.nn.Module):
    """Encodes token batches into (optionally L2-normalised) pooled embeddings."""

    def __init__(self, model, settings: RetrievalSettings):
        super().__init__()
        self.model = model  # the whole loaded model (what gets saved)
        self.settings = settings
        self.packable = supports_packing(model)

    @property
    def encoder(self):
        return self.model.get_encoder() if self.model.config.is_encoder_decoder else self.model

    @property
    def config(self):
        return self.model.config

    @property
    def device_type(self) -> str:
        return next(self.parameters()).device.type

    def embed_arrays(self, input_ids, mask):
        """Embeddings (float32 numpy) of a padded batch given as numpy arrays (token ids and
        0/1 mask, int64), computed on the model's device without gradients."""
        device = next(self.parameters()).device
        with torch.inference_mode():
            emb = self(torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device))
            return emb.float().cpu().numpy()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # No work on padding (training, validation on the CPU): see packed_encoder.py. On a
        # CUDA GPU transformers' padded forward is the faster one: per-group small ops and
        # host syncs cost more there than the padding saves (H200, 2026-11-27, e5-small shape:
        # batch 32 0.07-0.23 s/step padded vs 0.94-1.6 packed; batch 512 0.30-0.64 vs 4.4-5.8).
        if self.packable and input_ids.device.type == "cpu":
            out = packed_forward(self.model, input_ids, attention_mask)
        else:
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        emb = pool(out, attention_mask, self.settings.pooling)
        if self.settings.normalize:
            emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb


def pool(output, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    hidden = output.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "pooler":
        pooled = getattr(output, "pooler_output", None)
        if pooled is None:
            raise InputError("this model has no pooler layer; use --pooling cls or mean",
                             field="pooling")
        return pooled
    # Summed in at least fp32 and returned so: a bf16 mean would round every embedding to
    # 8 significant bits, enough to reorder near-tied passages (XQuAD-R candidates that share
    # a paragraph) against the fp32 ranking.
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1, dtype=dtype) / mask.sum(1, dtype=dtype).clamp(min=1)


def load_biencoder(name_or_path: str, trust_remote_code: bool = False, *,
                   settings_folder: str | None = None, **overrides) -> tuple[BiEncoder, object]:
    """Load model + tokenizer; settings = saved ``hbt_retrieval.json`` (of ``settings_folder``
    where the caller already holds the hub model's snapshot) or family defaults, then any
    non-None ``overrides`` (pooling, query_prefix, max_query_length, ...)."""
    import transformers
    from safetensors import SafetensorError

    check_model_folder(name_or_path)
    path = resolve_model_path(name_or_path)
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(path, trust_remote_code)
        model_class = _model_class(config)
        with _quiet_transformers():
            model, loading_info = model_class.from_pretrained(
                path, config=config, trust_remote_code=trust_remote_code,
                output_loading_info=True)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise load_failure(e, name_or_path) from None
    settings = retrieval_settings(settings_folder or path, config.model_type, name_or_path,
                                  overrides)
    _check_missing_weights(loading_info.get("missing_keys", ()), settings, name_or_path)
    return BiEncoder(model, settings), tokenizer


def load_inference_biencoder(name_or_path: str, trust_remote_code: bool = False, *,
                             folder: InferenceFolder | None = None, tokenizer=None,
                             **overrides) -> tuple[BiEncoder, object]:
    """:func:`load_biencoder` for encoding only: a BERT / XLM-R folder or hub model runs on
    :mod:`.fast_encoder` (no transformers import: seconds less per start), anything else on
    transformers. ``folder``: :func:`.folder.inference_folder` of the name, where the caller
    has it already; ``tokenizer``: the fast path's tokenizer, where the caller started one
    (:func:`.fast_tokenizer.start_tokenizer_process`)."""
    from .fast_encoder import load_fast_encoder

    path, config = folder or inference_folder(name_or_path)
    if config is None:  # a snapshot already holds hbt_retrieval.json if the model has one
        return load_biencoder(name_or_path, trust_remote_code=trust_remote_code,
                              settings_folder=path if os.path.isdir(path) else None,
                              **overrides)
    return (BiEncoder(load_fast_encoder(path, config),
                      retrieval_settings(path, config["model_type"], name_or_path, overrides)),
            tokenizer or FastTokenizer(path))


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The folder's ``tokenizer.json`` pipeline exactly as written, else the model's own class.

    transformers 5 rebuilds class-specific tokenizers (``XLMRobertaTokenizer``, ...) from the
    vocabulary in tokenizer.json and drops its normalizer unless a SentencePiece charsmap is
    passed: NFKC is lost and full-width punctuation ("，", "？") becomes <unk>. The generic fast
    tokenizer keeps the whole pipeline, and loads 3-4x faster.
    """
    import transformers

    try:
        tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(
            path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError):  # no tokenizer.json: a SentencePiece-only folder
        tokenizer = None
    if tokenizer is not None and tokenizer.pad_token is not None:
        return tokenizer
    return transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def _check_missing_weights(missing, settings: RetrievalSettings, name: str) -> None:
    """Randomly initialised weights: an unused pooler is fine, anything else is said aloud."""
    pooler = [k for k in missing if k.startswith("pooler.")]
    if pooler and settings.pooling == "pooler":
        raise InputError("this checkpoint has no trained pooler weights; use --pooling cls or "
                         "mean", name, field="pooling")
    other = [k for k in missing if not k.startswith("pooler.")]
    if other:
        print(f"hbt-tools: warning: {len(other)} weights missing from {name} were initialised "
              f"randomly (first: {other[0]})", file=sys.stderr)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' load report and progress bars would bury our one-line messages."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _model_class(config):
    import transformers

    # T5-style models have a dedicated encoder-only class; mBART loads whole, runs its encoder.
    if config.model_type in ("t5", "mt5", "umt5"):
        return transformers.AutoModelForTextEncoding
    return transformers.AutoModel


def save_biencoder(biencoder: BiEncoder, tokenizer, directory: str) -> None:
    """Hugging Face folder (safetensors + tokenizer) plus the retrieval settings JSON."""
    os.makedirs(directory, exist_ok=True)
    biencoder.model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    biencoder.settings.save(directory)


def cpu_has_fast_bf16() -> bool:
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` = the current CUDA device where torch sees one (pick a GPU per process with
    CUDA_VISIBLE_DEVICES), else the CPU; or an explicit ``cpu``, ``cuda``, ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N)", field="device")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"torch {torch.__version__} sees no CUDA device here "
                             "(use --device cpu or auto)", field="device")
        if device.index is not None and device.index >= count:
            raise InputError(f"no device {name!r}: torch sees {count} CUDA device(s)",
                             field="device")
    return device


def resolve_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    """``auto`` = bf16 where the hardware does it fast (AMX / AVX512-BF16 CPUs, Ampere+ GPUs)."""
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    if name != "auto":
        raise InputError(f"unknown dtype {name!r} (auto, bf16, fp32)", field="dtype")
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt", return_token_type_ids=False)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
