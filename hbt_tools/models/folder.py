"""Torch-free checks of a model folder, so that a path that cannot be a model fails at once
(before torch and transformers take seconds to load) with the usual one-line error; a hub
model's files in the Hugging Face cache; which folders the fast encoder runs."""
from __future__ import annotations

import json
import os
from typing import NamedTuple

from ..io import InputError
from .settings import SETTINGS_FILE, RetrievalSettings, family_defaults

# What hbt_tools.models.fast_encoder reads (hbt_retrieval.json besides, when there is one).
FAST_PATH_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
# Architectures hbt_tools.models.fast_encoder runs itself.
FAST_MODEL_TYPES = ("bert", "xlm-roberta")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model_folder(name_or_path: str) -> None:
    """Refuse a local file, a path that can only be local but does not exist, or a local folder
    without a config.json naming a ``model_type`` or without weights. Anything else (a hub name,
    the built-in model's name) passes unchecked."""
    def refuse(reason: str):
        raise InputError(f"cannot load a model from here ({reason})", name_or_path)

    if os.path.isfile(name_or_path):
        refuse("a file, expected a model folder")
    if not os.path.isdir(name_or_path):
        reason = _why_not_a_hub_name(name_or_path)
        if reason is not None:  # else the hub would be asked, with retries
            refuse(f"no such folder{reason}")
        return
    config_path = os.path.join(name_or_path, "config.json")
    if not os.path.isfile(config_path):
        refuse("a folder without config.json")
    try:
        with open(config_path, "rb") as fh:
            config = json.load(fh)
    except (ValueError, OSError) as e:
        refuse(f"config.json is not valid JSON: {e}")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        refuse("config.json names no model_type")
    if not any(os.path.isfile(os.path.join(name_or_path, name)) for name in WEIGHT_FILES):
        refuse(f"no weights: none of {', '.join(WEIGHT_FILES)}")


def _why_not_a_hub_name(name: str) -> str | None:
    """None when ``name`` may be a hub name (``org/model`` or ``model``); else why it is a local
    path: an absolute or explicitly relative path, more than one ``/``, or a first part that is
    a local folder (a mistyped ``runs/hybird``; that reason is spelled out)."""
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        return ""
    first = name.split("/")[0]
    if "/" in name and os.path.isdir(first):
        return f"; {first}/ is a local folder, so this is not taken for a hub name"
    return None


def resolve_model_path(name_or_path: str) -> str:
    """A local folder, a built-in offline name (``multilingual-e5-small``), or a hub name."""
    if os.path.isdir(name_or_path):
        return name_or_path
    from .offline import resolve_builtin

    builtin = resolve_builtin(name_or_path)
    return builtin or name_or_path


class InferenceFolder(NamedTuple):
    """Where an encoder's files are, and its config.json if :mod:`.fast_encoder` can run it."""

    path: str                 # a local folder, or a hub name the cache could not snapshot
    fast_config: dict | None


def inference_folder(name_or_path: str) -> InferenceFolder:
    """Resolve a folder, the built-in name or a hub name (snapshot of the fast path's files) to
    the folder hbt-encode loads, without importing torch."""
    check_model_folder(name_or_path)
    path = resolve_model_path(name_or_path)
    if not os.path.isdir(path):
        path = hub_snapshot(path) or path
    return InferenceFolder(path, fast_path_config(path) if os.path.isdir(path) else None)


def fast_path_config(folder: str) -> dict | None:
    """The folder's config.json when :mod:`.fast_encoder` can run it exactly, else None."""
    if not all(os.path.isfile(os.path.join(folder, name)) for name in FAST_PATH_FILES):
        return None
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    return config if is_plain_bert(config) and "auto_map" not in config else None


def position_limit(config: dict) -> int | None:
    """How many tokens a text may have in a BERT / XLM-R model with this config.json: its
    position table's rows, less XLM-R's ``padding_idx + 1`` rows before the first position."""
    rows = config.get("max_position_embeddings")
    if rows is None:
        return None
    return rows - config.get("pad_token_id", 1) - 1 if config.get("model_type") == "xlm-roberta" \
        else rows


def is_plain_bert(config: dict) -> bool:
    """A BERT / XLM-R encoder with GELU and absolute positions: what :mod:`.fast_encoder` and
    :mod:`.packed_encoder` compute."""
    return (config.get("model_type") in FAST_MODEL_TYPES
            and config.get("hidden_act", "gelu") == "gelu"
            and config.get("position_embedding_type", "absolute") == "absolute"
            and not config.get("is_decoder") and not config.get("add_cross_attention"))


def load_failure(error: Exception, where: str) -> InputError:
    """The usual one-line error for weights or files that fail to load: the error's first line."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return InputError(f"cannot load a model from here ({first})", where)


def hub_file(name: str, file: str) -> str | None:
    """The local path of hub model ``name``'s ``file`` (downloaded into the Hugging Face cache
    if needed); None when the repository has no such file or the hub cannot be reached."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(name, file)
    except (OSError, ValueError, EntryNotFoundError):
        return None


def hub_snapshot(name: str) -> str | None:
    """The local folder (in the Hugging Face cache) holding what hub model ``name`` has of
    :data:`FAST_PATH_FILES` and hbt_retrieval.json, fetched in one go, or None where the cache
    cannot complete the snapshot. A repository lacking some of those files (e.g. weights only
    as pytorch_model.bin) fails :func:`fast_encoder.fast_path_config` and goes to transformers.
    A name the hub does not know, or a hub that cannot be reached while the cache lacks the
    model, fails here (transformers would fail the same way, after retrying)."""
    from huggingface_hub import errors, snapshot_download

    try:
        return snapshot_download(name, allow_patterns=[*FAST_PATH_FILES, SETTINGS_FILE])
    except getattr(errors, "IncompleteSnapshotError", ()):
        return None  # cached without some of these files: transformers may still load it
    except (OSError, ValueError) as e:
        raise load_failure(e, name) from None


def retrieval_settings(path: str, model_type: str, name_or_path: str,
                       overrides: dict) -> RetrievalSettings:
    """The folder's (or hub model's) ``hbt_retrieval.json``, else the family's defaults; then
    ``overrides``. No torch: hbt-encode knows its prefix and max length before the import."""
    if not os.path.isdir(path):  # a hub name
        saved = hub_file(path, SETTINGS_FILE)
        path = os.path.dirname(saved) if saved else ""
    base = (RetrievalSettings.load(path) if path else None) \
        or family_defaults(model_type, name_or_path)
    return base.updated(**overrides)
