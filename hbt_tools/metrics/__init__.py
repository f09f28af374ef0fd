"""Ranking metrics, one per module, each a vectorised function of :class:`RankedHits`.

Metric names accepted by ``hbt-score -m`` (case-insensitive; trec_eval's names also work):

==============  ==========================  ===============================
name            trec_eval                   module
==============  ==========================  ===============================
``map``         ``map``                     :mod:`.average_precision`
``map@k``       ``map_cut.k``               :mod:`.average_precision`
``ndcg``        ``ndcg``                    :mod:`.ndcg`
``ndcg@k``      ``ndcg_cut.k``              :mod:`.ndcg`
``recall@k``    ``recall.k``                :mod:`.recall`
``p@k``         ``P.k``                     :mod:`.precision`
``mrr``         ``recip_rank``              :mod:`.reciprocal_rank`
``mrr@k``       (recip_rank of the top k)   :mod:`.reciprocal_rank`
``r-prec``      ``Rprec``                   :mod:`.r_precision`
==============  ==========================  ===============================
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..io import InputError
from .average_precision import average_precision
from .hits import RankedHits
from .ndcg import ndcg
from .precision import precision
from .r_precision import r_precision
from .rank_distance import rank_distance
from .recall import recall
from .reciprocal_rank import reciprocal_rank

__all__ = ["Metric", "RankedHits", "parse_metric", "parse_metrics", "average_precision", "ndcg",
           "precision", "r_precision", "rank_distance", "recall", "reciprocal_rank",
           "METRIC_NAMES"]

# canonical name -> (function, cutoff: "optional" | "required" | "none")
_METRICS: dict[str, tuple[Callable, str]] = {
    "map": (average_precision, "optional"),
    "ndcg": (ndcg, "optional"),
    "recall": (recall, "required"),
    "p": (precision, "required"),
    "mrr": (reciprocal_rank, "optional"),
    "r-prec": (r_precision, "none"),
}
_TREC_EVAL_NAMES = {"map_cut": "map", "ndcg_cut": "ndcg", "recall": "recall", "p": "p"}
_WHOLE_NAMES = {"recip_rank": "mrr", "rprec": "r-prec"}
METRIC_NAMES = "map, map@k, ndcg, ndcg@k, recall@k, p@k, mrr, mrr@k, r-prec"


@dataclass(frozen=True)
class Metric:
    label: str          # the name as the user wrote it (the key in JSON output)
    name: str           # canonical name: map, ndcg, recall, p, mrr, r-prec
    k: int | None       # cutoff

    def __call__(self, hits: RankedHits) -> np.ndarray:
        function, _ = _METRICS[self.name]
        return function(hits) if self.name == "r-prec" else function(hits, self.k)


def parse_metric(label: str) -> Metric:
    """``"ndcg@10"`` (or trec_eval's ``"ndcg_cut.10"``) -> Metric; InputError if unknown."""
    text = label.strip().lower()
    name, k = text, None
    if text in _WHOLE_NAMES:
        name = _WHOLE_NAMES[text]
    elif match := re.fullmatch(r"([a-z_-]+)@(\d+)", text):
        name, k = match[1], int(match[2])
    elif match := re.fullmatch(r"([a-z_]+)[._](\d+)", text):
        if match[1] not in _TREC_EVAL_NAMES:
            _unknown(label)
        name, k = _TREC_EVAL_NAMES[match[1]], int(match[2])
    if name not in _METRICS:
        _unknown(label)
    cutoff = _METRICS[name][1]
    if k is None and cutoff == "required":
        raise InputError(f"metric {label!r} needs a cutoff, e.g. {name}@10", field="metric")
    if k is not None and cutoff == "none":
        raise InputError(f"metric {label!r} takes no cutoff", field="metric")
    if k is not None and k < 1:
        raise InputError(f"metric {label!r}: the cutoff must be at least 1", field="metric")
    return Metric(label, name, k)


def parse_metrics(labels) -> list[Metric]:
    """Metric names, repeated and/or comma-separated -> Metrics (duplicates dropped)."""
    names = [part for label in labels for part in label.split(",") if part.strip()]
    return [parse_metric(name) for name in dict.fromkeys(names)]


def _unknown(label: str):
    raise InputError(f"unknown metric {label!r}; known: {METRIC_NAMES}", field="metric")
