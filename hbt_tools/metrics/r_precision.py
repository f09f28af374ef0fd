"""R-precision (``r-prec``, trec_eval's ``Rprec``)."""
from __future__ import annotations

import numpy as np

from .hits import RankedHits


def r_precision(hits: RankedHits) -> np.ndarray:
    r"""Per-query precision at rank R, R being the query's number of relevant documents.

    .. math:: R\text{-}prec = \frac{|Rel \cap \text{top-}R|}{R}, \qquad R = |Rel|

    0 for a query without relevant documents. Reference: Buckley & Voorhees (2000), "Evaluating
    evaluation measure stability", SIGIR; trec_eval ``Rprec``.
    """
    within_r = hits.rank <= hits.n_relevant[hits.query]
    return hits.per_relevant(hits.sum_per_query(1.0, within_r))
