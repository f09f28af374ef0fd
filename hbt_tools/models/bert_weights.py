"""The weight names of a BERT / XLM-R encoder checkpoint, shared by the encoders that read them
(:mod:`.fast_encoder` on PyTorch, :mod:`.native_bert` on its C++ library). No torch here."""
from __future__ import annotations

from ..io import InputError

# Prefixes that task heads put before the encoder's weight names (BertForX, XLMRobertaForX).
WEIGHT_PREFIXES = ("bert.", "roberta.")
LAYER_WEIGHTS = ("attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                 "output.dense", "output.LayerNorm")


def weight_prefix(names) -> str:
    """The task-head prefix all of ``names`` carry, or ""."""
    names = list(names)
    for prefix in WEIGHT_PREFIXES:
        if names and all(name.startswith(prefix) for name in names):
            return prefix
    return ""


def encoder_weight_names(config: dict) -> list[str]:
    """Every weight the encoder's forward reads, embeddings first, then layer by layer."""
    names = [f"embeddings.{name}.weight" for name in (
        "word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm")]
    names += ["embeddings.LayerNorm.bias"]
    return names + [f"encoder.layer.{i}.{name}.{part}" for i in range(config["num_hidden_layers"])
                    for name in LAYER_WEIGHTS for part in ("weight", "bias")]


def check_complete(names, config: dict, folder: str) -> None:
    """An InputError naming the first weight the forward needs that ``names`` lacks."""
    missing = [name for name in encoder_weight_names(config) if name not in names]
    if missing:
        raise InputError(f"cannot load a model from here (weight {missing[0]!r} missing)",
                         folder)
