"""Rank distance: how far apart one query's relevant documents land (language bias)."""
from __future__ import annotations

import numpy as np

from .hits import RankedHits


def rank_distance(hits: RankedHits) -> np.ndarray:
    r"""Per query: max rank − min rank over its retrieved relevant documents (0 if fewer than 2).

    .. math:: RD = \max_{d \in Rel} rank(d) - \min_{d \in Rel} rank(d)

    In a multilingual pool where each query has one relevant candidate per language, a model
    without language bias ranks them next to each other (RD = #languages − 1); a biased model
    pushes other languages' answers down. Lower is better. Reference: Huang et al. (2023), as used
    by Elmahdy, Lin & Ahmad (2024), "Synergistic approach for simultaneous optimization of
    monolingual, cross-lingual, and multilingual information retrieval", arXiv 2408.10536.
    """
    out = np.zeros(hits.n_queries)
    last = hits.last_hit()
    out[hits.query[last]] = hits.rank[last] - hits.rank[hits.first_hit()]
    return out
