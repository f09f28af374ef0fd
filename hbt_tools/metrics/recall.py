"""Recall at a cutoff (``recall@k``, trec_eval's ``recall.k``)."""
from __future__ import annotations

import numpy as np

from .hits import RankedHits, cutoff_mask


def recall(hits: RankedHits, k: int) -> np.ndarray:
    r"""Per-query recall@k.

    .. math:: R@k = \frac{|Rel \cap \text{top-}k|}{|Rel|}

    0 for a query without relevant documents. Reference: trec_eval ``recall.k``; the LAReQA
    protocol's R@1 / R@10 (Roy et al. 2020, "LAReQA: Language-agnostic answer retrieval from a
    multilingual pool", EMNLP).
    """
    return hits.per_relevant(hits.sum_per_query(1.0, cutoff_mask(hits, k)))
