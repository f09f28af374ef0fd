"""Resumable checkpoints and crash-safe publishing of models.

Layout of an output folder ``DIR``::

    DIR/train_log.jsonl          one JSON line per optimizer step
    DIR/checkpoint-STEP/         the latest checkpoint only (older ones are deleted)
        config.json, model.safetensors, tokenizer files, hbt_retrieval.json   (a loadable model)
        trainer_state.pt         step, batch lines consumed, total steps, AdamW state, RNG states
                                 of every rank (python, numpy, torch[, cuda]), best validation loss
    DIR/best-STEP/               with --validation: the best model so far (+ best.json with its
                                 step and validation loss); the older ones are deleted
    DIR/config.json, ...         the final model (with --validation: a hard-linked copy of the
                                 best one)

Every folder is written under a hidden temporary name and renamed into place, so a ``kill -9``
leaves either the previous complete checkpoint or the new complete one. The final model is moved
file by file into ``DIR`` with ``config.json`` removed first and put back last: ``DIR`` holds a
complete model or none. ``trainer_state.pt`` holds only tensors and plain Python values and is
read back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import torch

from ..io import InputError
from ..models.encoder import save_biencoder
from .layout import (BEST_INFO, MODEL_MARKER, STATE_FILE, TEMP_PREFIX, best_dirs,
                     checkpoint_dirs)


# ---------------------------------------------------------------- RNG

def capture_rng() -> dict:
    """Python, numpy and torch (CPU and CUDA) RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": _tuples_to_lists(random.getstate()),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples_to_lists(value):
    if isinstance(value, tuple):
        return [_tuples_to_lists(v) for v in value]
    return value


# ---------------------------------------------------------------- folders

def _fsync_tree(directory: str) -> None:
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _temp_dir(output_dir: str, name: str) -> str:
    path = os.path.join(output_dir, f"{TEMP_PREFIX}{name}-{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def _rename_dir_into_place(temp: str, final: str) -> None:
    if os.path.exists(final):
        # The same step saved again (a resumed run that had nothing left to do): same content.
        shutil.rmtree(temp)
    else:
        os.rename(temp, final)


def _save_versioned(output_dir: str, name: str, write, existing) -> str:
    """Write folder ``name`` through a temporary one, then delete the older versions."""
    temp = _temp_dir(output_dir, name)
    write(temp)
    _fsync_tree(temp)
    final = os.path.join(output_dir, name)
    _rename_dir_into_place(temp, final)
    for _, path in existing(output_dir):
        if path != final:
            shutil.rmtree(path, ignore_errors=True)
    return final


def save_checkpoint(output_dir: str, biencoder, tokenizer, trainer_state: dict) -> str:
    """Write ``checkpoint-STEP`` atomically and delete the older checkpoints."""
    def write(folder):
        save_biencoder(biencoder, tokenizer, folder)
        torch.save(trainer_state, os.path.join(folder, STATE_FILE))

    return _save_versioned(output_dir, f"checkpoint-{trainer_state['step']}", write,
                           checkpoint_dirs)


def load_trainer_state(checkpoint_dir: str) -> dict:
    path = os.path.join(checkpoint_dir, STATE_FILE)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file: report, never unpickle
        raise InputError(f"cannot read the trainer state ({type(e).__name__}: {e})",
                         path) from None


def save_best(output_dir: str, biencoder, tokenizer, step: int, loss: float) -> str:
    """Write ``best-STEP`` (model + ``best.json``) atomically and delete the older ones."""
    def write(folder):
        save_biencoder(biencoder, tokenizer, folder)
        with open(os.path.join(folder, BEST_INFO), "w", encoding="utf-8") as fh:
            json.dump({"step": step, "validation_loss": loss}, fh)

    return _save_versioned(output_dir, f"best-{step}", write, best_dirs)


def publish_model_folder(source: str, output_dir: str, move: bool) -> None:
    """Put the model files of ``source`` into ``output_dir`` so that a kill at any moment leaves
    either a complete model or no ``config.json`` (no model) there."""
    marker = os.path.join(output_dir, MODEL_MARKER)
    if os.path.exists(marker):
        os.unlink(marker)
    names = sorted(n for n in os.listdir(source)
                   if os.path.isfile(os.path.join(source, n)) and n != BEST_INFO)
    for name in sorted(names, key=lambda n: n == MODEL_MARKER):  # config.json last
        src, dst = os.path.join(source, name), os.path.join(output_dir, name)
        if move:
            os.replace(src, dst)
        else:
            _link_or_copy(src, dst)


def _link_or_copy(src: str, dst: str) -> None:
    temp = os.path.join(os.path.dirname(dst), f"{TEMP_PREFIX}{os.path.basename(dst)}")
    if os.path.exists(temp):
        os.unlink(temp)
    try:
        os.link(src, temp)
    except OSError:
        shutil.copy2(src, temp)
    os.replace(temp, dst)


def save_final_model(output_dir: str, biencoder, tokenizer) -> None:
    temp = _temp_dir(output_dir, "final")
    save_biencoder(biencoder, tokenizer, temp)
    _fsync_tree(temp)
    publish_model_folder(temp, output_dir, move=True)
    shutil.rmtree(temp)


def publish_best_model(output_dir: str) -> dict:
    """Make the newest ``best-STEP`` the final model in ``DIR``; returns its ``best.json``."""
    _, best = best_dirs(output_dir)[-1]
    with open(os.path.join(best, BEST_INFO), encoding="utf-8") as fh:
        info = json.load(fh)
    publish_model_folder(best, output_dir, move=False)
    return info
