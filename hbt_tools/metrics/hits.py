"""Where each query's relevant documents landed in its ranking: all the metrics here need.

Every metric of this package is a function of the 1-based ranks of the relevant documents (grade
> 0, as trec_eval with its default relevance level 1), the number of relevant documents per query
and, for nDCG, the grades of all judged relevant documents. Knowing only these ranks lets the
LAReQA protocol score full 13,014-candidate pools without sorting them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RankedHits:
    """Relevant documents found in the rankings of ``n_queries`` queries.

    ``query``, ``rank`` and ``grade`` describe one retrieved relevant document each, sorted by
    query, then rank. ``ideal_query`` / ``ideal_grade`` list every judged relevant document
    (retrieved or not), sorted by query, then grade descending: the ideal ranking of nDCG.
    """
    n_queries: int
    query: np.ndarray          # int64, per hit
    rank: np.ndarray           # int64, per hit, 1-based
    grade: np.ndarray          # float64, per hit, > 0
    n_relevant: np.ndarray     # int64, per query: judged documents with grade > 0
    ideal_query: np.ndarray    # int64, per judged relevant document
    ideal_grade: np.ndarray    # float64, per judged relevant document

    @classmethod
    def build(cls, n_queries: int, query, rank, grade, ideal_query, ideal_grade) -> "RankedHits":
        """Sort the hits and the ideal grades into the documented order."""
        query, rank = np.asarray(query, np.int64), np.asarray(rank, np.int64)
        grade = np.asarray(grade, np.float64)
        order = np.lexsort((rank, query))
        ideal_query = np.asarray(ideal_query, np.int64)
        ideal_grade = np.asarray(ideal_grade, np.float64)
        ideal_order = np.lexsort((-ideal_grade, ideal_query))
        return cls(n_queries, query[order], rank[order], grade[order],
                   np.bincount(ideal_query, minlength=n_queries).astype(np.int64),
                   ideal_query[ideal_order], ideal_grade[ideal_order])

    def sum_per_query(self, values, where=None) -> np.ndarray:
        """Sum of a per-hit quantity for each query (hits outside ``where`` left out)."""
        query = self.query if where is None else self.query[where]
        values = np.broadcast_to(values, self.query.shape)
        values = values if where is None else values[where]
        return np.bincount(query, weights=values, minlength=self.n_queries)

    def hits_so_far(self) -> np.ndarray:
        """Per hit: how many relevant documents its query has at this rank or above (1-based)."""
        return position_within_group(self.query)

    def first_hit(self) -> np.ndarray:
        """Mask of the best-ranked hit of each query."""
        first = np.ones(len(self.query), dtype=bool)
        first[1:] = self.query[1:] != self.query[:-1]
        return first

    def last_hit(self) -> np.ndarray:
        """Mask of the worst-ranked hit of each query."""
        last = np.ones(len(self.query), dtype=bool)
        last[:-1] = self.query[1:] != self.query[:-1]
        return last

    def per_relevant(self, totals: np.ndarray) -> np.ndarray:
        """``totals / n_relevant`` per query; 0 for a query without relevant documents."""
        return safe_divide(totals, self.n_relevant)


def position_within_group(group: np.ndarray) -> np.ndarray:
    """1-based position of each element among the elements of its group (``group`` sorted)."""
    first = np.searchsorted(group, group, side="left")
    return np.arange(1, len(group) + 1) - first


def safe_divide(numerator, denominator) -> np.ndarray:
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def cutoff_mask(hits: RankedHits, k: int | None):
    """Hits ranked within the top ``k`` (all hits when ``k`` is None)."""
    return None if k is None else hits.rank <= k
