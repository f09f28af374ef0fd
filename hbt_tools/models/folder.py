"""Torch-free checks of a model folder, so that a path that cannot be a model fails at once
(before torch and transformers take seconds to load) with the usual one-line error."""
from __future__ import annotations

import json
import os

from ..io import InputError

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
