"""Checks of hbt-train's arguments and inputs that need no torch, run before any model loads:
bad input fails in a fraction of a second, and never after hours of training."""
from __future__ import annotations

import os

from ..io import STDIO, InputError
from ..models.folder import check_model_folder
from .batch_format import check_batch_file
from .layout import last_checkpoint


def preflight(config) -> int | None:
    """Validate ``config`` (a TrainConfig); returns the number of batch lines the run will use
    when the batches are a file (None for stdin)."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if config.batches == STDIO and distributed:
        raise InputError("a data-parallel run needs a batches file (every rank reads it), "
                         "not stdin", field="batches")
    if config.batches == STDIO and not config.max_steps:
        raise InputError("reading batches from stdin: give --max-steps (the learning-rate "
                         "schedule needs the total number of steps)", field="max-steps")
    check_model_folder(config.model)
    if config.resume:
        last_checkpoint(config.output)
    if config.validation and check_batch_file(config.validation) == 0:
        raise InputError("empty input: no batch lines", config.validation)
    if config.batches == STDIO:
        return None
    lines = check_batch_file(config.batches, config.max_steps)
    if lines == 0:
        raise InputError("empty input: no batch lines", config.batches)
    return lines
