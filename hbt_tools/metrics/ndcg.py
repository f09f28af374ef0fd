"""Normalised discounted cumulative gain with trec_eval's linear gain (``ndcg``, ``ndcg_cut.k``)."""
from __future__ import annotations

import numpy as np

from .hits import RankedHits, cutoff_mask, position_within_group, safe_divide


def ndcg(hits: RankedHits, k: int | None = None) -> np.ndarray:
    r"""Per-query nDCG@k (all ranks when ``k`` is None).

    .. math:: DCG@k = \sum_{r=1}^{k} \frac{g_r}{\log_2(r + 1)}, \qquad
              nDCG@k = \frac{DCG@k}{IDCG@k}

    with the linear gain :math:`g_r` = the relevance grade of the document at rank :math:`r`
    (0 for unjudged, non-relevant or negatively judged documents) and :math:`IDCG@k` the DCG of
    the judged relevant documents sorted by grade; 0 when the query has none.
    Reference: Järvelin & Kekäläinen (2002), "Cumulated gain-based evaluation of IR techniques",
    ACM TOIS 20(4); trec_eval ``ndcg`` / ``ndcg_cut`` (linear gain, base-2 log discount).
    """
    dcg = hits.sum_per_query(hits.grade / np.log2(hits.rank + 1.0), cutoff_mask(hits, k))
    ideal_rank = position_within_group(hits.ideal_query)
    keep = slice(None) if k is None else ideal_rank <= k
    idcg = np.bincount(hits.ideal_query[keep],
                       weights=(hits.ideal_grade / np.log2(ideal_rank + 1.0))[keep],
                       minlength=hits.n_queries)
    return safe_divide(dcg, idcg)
