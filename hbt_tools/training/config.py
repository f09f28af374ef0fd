"""Every setting of a training run (the options of ``hbt-train``); no torch here."""
from __future__ import annotations

import dataclasses

from ..io import STDIO


@dataclasses.dataclass
class TrainConfig:
    model: str
    output: str
    batches: str = STDIO
    max_steps: int | None = None      # None: every line of the file (required for stdin)
    lr: float = 3e-5
    weight_decay: float = 0.01
    temperature: float = 0.05
    warmup_steps: int = 0
    pooling: str | None = None        # None: the model's saved settings or its family default
    query_prefix: str | None = None
    passage_prefix: str | None = None
    max_query_length: int | None = None
    max_passage_length: int | None = None
    dtype: str = "auto"
    device: str = "auto"              # auto: cuda:LOCAL_RANK where torch sees a GPU, else cpu
    seed: int = 42
    save_steps: int | None = 500      # None or 0: no intermediate checkpoints
    resume: bool = False
    validation: str | None = None
    eval_steps: int | None = None     # None: at every checkpoint (and always at the end)
    chunk_size: int | None = None     # None: no gradient caching
    trust_remote_code: bool = False
    progress: bool = True
