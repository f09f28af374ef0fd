"""Torch-free checks of a model folder, so that a path that cannot be a model fails at once
(before torch and transformers take seconds to load) with the usual one-line error."""
from __future__ import annotations

import json
import os

from ..io import InputError

# What hbt_tools.models.fast_encoder reads (hbt_retrieval.json besides, when there is one).
FAST_PATH_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model_folder(name_or_path: str) -> None:
    """Refuse a local file, or a local folder without a config.json naming a ``model_type`` or
    without weights. Anything else (a hub name, the built-in model's name) passes unchecked."""
    def refuse(reason: str):
        raise InputError(f"cannot load a model from here ({reason})", name_or_path)

    if os.path.isfile(name_or_path):
        refuse("a file, expected a model folder")
    if not os.path.isdir(name_or_path):
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


def load_failure(error: Exception, where: str) -> InputError:
    """The usual one-line error for weights or files that fail to load: the error's first line."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return InputError(f"cannot load a model from here ({first})", where)


def hub_snapshot(name: str) -> str | None:
    """The local folder (in the Hugging Face cache) holding hub model ``name``'s
    :data:`FAST_PATH_FILES`, downloaded if needed; None when the repository lacks one of them
    (e.g. weights only as pytorch_model.bin) or the hub cannot be reached: transformers then
    loads ``name`` its own way, with its own error messages."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        return None
    try:
        folder = os.path.dirname(hf_hub_download(name, FAST_PATH_FILES[0]))
        for file in FAST_PATH_FILES[1:]:
            hf_hub_download(name, file)
    except (OSError, ValueError, EntryNotFoundError):
        return None
    try:  # a model trained by hbt-train carries its retrieval settings
        hf_hub_download(name, "hbt_retrieval.json")
    except (OSError, ValueError, EntryNotFoundError):
        pass
    return folder
