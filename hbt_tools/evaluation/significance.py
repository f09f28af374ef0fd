"""Paired randomization (permutation) tests between two systems on the same queries.

For each query q the two systems give values a_q and b_q; a reported statistic is a linear
combination T = Σ_q w_q (b_q − a_q) (a mean, or a mean of per-language means). Under the null
hypothesis that the systems are exchangeable, swapping a_q and b_q of any query is equally likely,
which flips the sign of its term. The two-sided p-value is

    p = (1 + #{permutations with |T_perm| >= |T_obs|}) / (1 + N)

over N random sign vectors (each query flipped with probability 1/2), drawn from a seeded
generator: the same seed gives the same p-values. Reference: Fisher (1935); Smucker, Allan &
Carterette (2007), "A comparison of statistical significance tests for information retrieval
evaluation", CIKM. The +1 counts the observed assignment, so p is never 0.

Several statistics are tested with the same sign vectors; per-language statistics only involve the
queries of one language, so the work is done per group of queries (``groups``).
"""
from __future__ import annotations

import numpy as np

from ..io import InputError
from .lareqa import LareqaScores, set_path, statistics
from .trec_eval import RunScores

PERMUTATIONS_PER_CHUNK = 500


def randomization_p_values(differences: np.ndarray, n_permutations: int = 10_000,
                           seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """Two-sided p-values, one per column of ``differences`` (queries x statistics; entry =
    w_q (b_q − a_q) of that statistic). ``groups`` (one label per query) lets statistics that
    involve one group only skip the other queries' columns; results do not depend on it."""
    differences = np.asarray(differences, dtype=np.float64)
    n_queries, n_stats = differences.shape
    observed = np.abs(differences.sum(axis=0))
    tolerance = 1e-9 * np.maximum(observed, 1e-12)
    if groups is None:
        groups = np.zeros(n_queries, dtype=np.int64)
    blocks = []
    for label in np.unique(groups):
        members = np.flatnonzero(groups == label)
        columns = np.flatnonzero(np.any(differences[members] != 0, axis=0))
        if len(columns):
            blocks.append((members, columns, differences[np.ix_(members, columns)]))
    rng = np.random.default_rng(seed)
    extreme = np.zeros(n_stats, dtype=np.int64)
    for done in range(0, n_permutations, PERMUTATIONS_PER_CHUNK):
        chunk = min(PERMUTATIONS_PER_CHUNK, n_permutations - done)
        signs = rng.integers(0, 2, size=(chunk, n_queries), dtype=np.int8) * 2 - 1
        permuted = np.zeros((chunk, n_stats))
        for members, columns, block in blocks:
            permuted[:, columns] += signs[:, members].astype(np.float64) @ block
        extreme += np.count_nonzero(np.abs(permuted) >= observed - tolerance, axis=0)
    return (1 + extreme) / (1 + n_permutations)


def compare_runs(a: RunScores, b: RunScores, n_permutations: int = 10_000,
                 seed: int = 0) -> dict:
    """Per metric: both means, B − A and the p-value, over the queries either run was evaluated
    on (a query that only one run retrieved for scores 0 in the other, as with trec_eval -c)."""
    query_ids = list(dict.fromkeys(a.query_ids + b.query_ids))
    values_a, values_b = _aligned(a, query_ids), _aligned(b, query_ids)
    labels = list(a.per_query)
    differences = np.stack([(values_b[m] - values_a[m]) / len(query_ids) for m in labels], axis=1)
    p_values = randomization_p_values(differences, n_permutations, seed)
    return {"compare": {"a": a.run, "b": b.run}, "queries": len(query_ids),
            "permutations": n_permutations, "seed": seed,
            "metrics": {m: {"a": float(values_a[m].mean()), "b": float(values_b[m].mean()),
                            "difference": float(differences[:, i].sum()),
                            "p_value": float(p_values[i])} for i, m in enumerate(labels)}}


def _aligned(scores: RunScores, query_ids: list[str]) -> dict[str, np.ndarray]:
    where = {qid: i for i, qid in enumerate(query_ids)}
    index = np.array([where[q] for q in scores.query_ids], dtype=np.int64)
    out = {}
    for label, values in scores.per_query.items():
        out[label] = np.zeros(len(query_ids))
        out[label][index] = values
    return out


def compare_lareqa(a: LareqaScores, b: LareqaScores, n_permutations: int = 10_000,
                   seed: int = 0) -> dict:
    """Every number of the LAReQA report (settings, languages, language pairs) for both systems,
    B − A and its p-value; queries are the exchangeable units (one sign flips all of a query's
    settings). Both systems must have the same queries, candidates and languages."""
    if (a.query_ids != b.query_ids or a.n_candidates != b.n_candidates
            or not np.array_equal(a.setting_query, b.setting_query)
            or not np.array_equal(a.setting_lang, b.setting_lang) or a.langs != b.langs):
        raise InputError("the two systems do not have the same queries, candidates and "
                         "relevant pairs (encode the same queries.jsonl / corpus.jsonl)")
    stats = statistics(a)
    n_queries = len(a.query_ids)
    differences = np.zeros((n_queries, len(stats)))
    for j, stat in enumerate(stats):
        delta = stat.weights * (b.values(stat.kind)[stat.index] - a.values(stat.kind)[stat.index])
        query = a.setting_query[stat.index] if stat.kind.startswith("setting") else stat.index
        differences[:, j] = np.bincount(query, weights=delta, minlength=n_queries)
    p_values = randomization_p_values(differences, n_permutations, seed, groups=a.query_lang)
    out: dict = {"protocol": "lareqa", "queries": n_queries, "permutations": n_permutations,
                 "seed": seed}
    for j, stat in enumerate(stats):
        set_path(out, stat.path, {
            "a": float(np.dot(stat.weights, a.values(stat.kind)[stat.index])),
            "b": float(np.dot(stat.weights, b.values(stat.kind)[stat.index])),
            "difference": float(differences[:, j].sum()), "p_value": float(p_values[j])})
    return out
