"""Average precision (``map`` averaged over queries; ``map@k`` is trec_eval's ``map_cut.k``)."""
from __future__ import annotations

import numpy as np

from .hits import RankedHits, cutoff_mask


def average_precision(hits: RankedHits, k: int | None = None) -> np.ndarray:
    r"""Per-query average precision.

    .. math:: AP = \frac{1}{|Rel|} \sum_{d \in Rel,\ rank(d) \le k} P@rank(d)

    where :math:`P@r` is the fraction of relevant documents among the top :math:`r` and
    :math:`|Rel|` counts every relevant document of the query, retrieved or not (0 when there are
    none). Reference: trec_eval ``map`` / ``map_cut``; Manning, Raghavan & Schütze (2008),
    *Introduction to Information Retrieval*, §8.4.
    """
    precision_at_hit = hits.hits_so_far() / hits.rank
    return hits.per_relevant(hits.sum_per_query(precision_at_hit, cutoff_mask(hits, k)))
