"""Retrieval settings saved beside a model (``hbt_retrieval.json``) so encoding needs no flags.

No torch import here: commands read and print settings without loading a network.
"""
from __future__ import annotations

import dataclasses
import json
import os

from ..io import InputError

SETTINGS_FILE = "hbt_retrieval.json"
POOLINGS = ("mean", "cls", "pooler")


@dataclasses.dataclass
class RetrievalSettings:
    pooling: str = "mean"
    normalize: bool = True
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    max_query_length: int = 64
    max_passage_length: int = 256

    def prefix(self, kind: str) -> str:
        return self.query_prefix if kind == "query" else self.passage_prefix

    def max_length(self, kind: str) -> int:
        return self.max_query_length if kind == "query" else self.max_passage_length

    def updated(self, **overrides) -> "RetrievalSettings":
        """A copy with every non-None override applied."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(clean) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown retrieval settings: {sorted(unknown)}")
        if clean.get("pooling", self.pooling) not in POOLINGS:
            raise InputError(f"pooling must be one of {POOLINGS}", field="pooling")
        return dataclasses.replace(self, **clean)

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, SETTINGS_FILE), "w", encoding="utf-8") as fh:
            json.dump(dataclasses.asdict(self), fh, indent=2)
            fh.write("\n")

    @classmethod
    def load(cls, directory: str) -> "RetrievalSettings | None":
        path = os.path.join(directory, SETTINGS_FILE)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"invalid JSON ({e})", path) from None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls().updated(**{k: v for k, v in data.items() if k in known})


def family_defaults(model_type: str, name: str = "") -> RetrievalSettings:
    """Paper/SPEC defaults by model family: CLS for BERT/LaBSE, mean for XLM-R, mE5, mBART, mT5.

    mE5 is a BERT architecture, so it is told apart by its name.
    """
    lowered = os.path.basename(os.path.normpath(name)).lower() if name else ""
    if model_type == "bert" and "e5" not in lowered:
        return RetrievalSettings(pooling="cls")
    return RetrievalSettings(pooling="mean")
