"""Precision at a cutoff (``p@k``, trec_eval's ``P.k``)."""
from __future__ import annotations

import numpy as np

from .hits import RankedHits, cutoff_mask


def precision(hits: RankedHits, k: int) -> np.ndarray:
    r"""Per-query precision@k.

    .. math:: P@k = \frac{|Rel \cap \text{top-}k|}{k}

    The denominator is :math:`k` even when fewer than :math:`k` documents were retrieved, as in
    trec_eval ``P.k``. Reference: Manning, Raghavan & Schütze (2008), §8.4.
    """
    return hits.sum_per_query(1.0, cutoff_mask(hits, k)) / k
