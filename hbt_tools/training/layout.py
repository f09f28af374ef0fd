"""Names and listing of the folders hbt-train writes into its output folder (no torch here, so
the command checks its input before loading torch). See :mod:`.checkpoint` for the layout."""
from __future__ import annotations

import os
import re
import shutil

from ..io import InputError

STATE_FILE = "trainer_state.pt"
BEST_INFO = "best.json"
MODEL_MARKER = "config.json"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
BEST_NAME = re.compile(r"^best-(\d+)$")
TEMP_PREFIX = ".tmp-"


def remove_stale_temporaries(output_dir: str) -> None:
    """Delete half-written folders a killed run left behind."""
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(TEMP_PREFIX):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def _versioned_dirs(output_dir: str, pattern: re.Pattern, required: str) -> list[tuple[int, str]]:
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = pattern.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, required)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def checkpoint_dirs(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in ``output_dir`` as ``(step, path)``, oldest first."""
    return _versioned_dirs(output_dir, CHECKPOINT_NAME, STATE_FILE)


def best_dirs(output_dir: str) -> list[tuple[int, str]]:
    """Complete best-model folders in ``output_dir`` as ``(step, path)``, oldest first."""
    return _versioned_dirs(output_dir, BEST_NAME, BEST_INFO)


def last_checkpoint(output_dir: str) -> str:
    found = checkpoint_dirs(output_dir)
    if not found:
        raise InputError("--resume: no checkpoint-STEP folder with a trainer state here",
                         output_dir)
    return found[-1][1]
