"""Reciprocal rank of the first relevant document (``mrr``, ``mrr@k``)."""
from __future__ import annotations

import numpy as np

from .hits import RankedHits


def reciprocal_rank(hits: RankedHits, k: int | None = None) -> np.ndarray:
    r"""Per-query reciprocal rank; its mean over queries is MRR.

    .. math:: RR@k = \frac{1}{\min\{rank(d) : d \in Rel\}} \text{ if that rank} \le k
              \text{, else } 0

    Reference: Voorhees (1999), "The TREC-8 question answering track report"; trec_eval
    ``recip_rank`` (no cutoff) — ``mrr@k`` equals ``recip_rank`` on the run cut to its top k.
    """
    first = hits.first_hit()
    if k is not None:
        first &= hits.rank <= k
    return hits.sum_per_query(1.0 / hits.rank, first)
