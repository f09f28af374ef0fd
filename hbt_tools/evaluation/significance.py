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
    return compare_lareqa_pooled([(a, b)], n_permutations, seed)


def compare_lareqa_pooled(pairs: list[tuple[LareqaScores, LareqaScores]],
                          n_permutations: int = 10_000, seed: int = 0) -> dict:
    """One test over several (A, B) pairs of the same benchmark, e.g. one pair per training
    seed: every number becomes the mean over pairs of A's, B's and B − A, and the sign flips
    are drawn per (pair, query), a randomization test stratified by pair. With one pair this
    is ``compare_lareqa``; with several the report adds ``"pairs": N``. Pooling seeds tests the
    strategies rather than one training run of each."""
    first = pairs[0][0]
    for a, b in pairs:
        for system in (a, b):
            if (system.query_ids != first.query_ids or system.n_candidates != first.n_candidates
                    or not np.array_equal(system.setting_query, first.setting_query)
                    or not np.array_equal(system.setting_lang, first.setting_lang)
                    or system.langs != first.langs):
                raise InputError("the systems do not have the same queries, candidates and "
                                 "relevant pairs (encode the same queries.jsonl / corpus.jsonl)")
    stats = statistics(first)
    n_queries, n_pairs = len(first.query_ids), len(pairs)
    differences = np.zeros((n_pairs * n_queries, len(stats)))
    means = {"a": np.zeros(len(stats)), "b": np.zeros(len(stats))}
    for p, (a, b) in enumerate(pairs):
        rows = slice(p * n_queries, (p + 1) * n_queries)
        for j, stat in enumerate(stats):
            value_a, value_b = (s.values(stat.kind)[stat.index] for s in (a, b))
            delta = stat.weights * (value_b - value_a) / n_pairs
            query = first.setting_query[stat.index] if stat.kind.startswith("setting") \
                else stat.index
            differences[rows, j] = np.bincount(query, weights=delta, minlength=n_queries)
            means["a"][j] += np.dot(stat.weights, value_a) / n_pairs
            means["b"][j] += np.dot(stat.weights, value_b) / n_pairs
    groups = np.concatenate([first.query_lang + p * (first.query_lang.max() + 1)
                             for p in range(n_pairs)])
    p_values = randomization_p_values(differences, n_permutations, seed, groups=groups)
    out: dict = {"protocol": "lareqa", "queries": n_queries, "permutations": n_permutations,
                 "seed": seed}
    if n_pairs > 1:
        out["pairs"] = n_pairs
    for j, stat in enumerate(stats):
        set_path(out, stat.path, {
            "a": float(means["a"][j]), "b": float(means["b"][j]),
            "difference": float(differences[:, j].sum()), "p_value": float(p_values[j])})
    return out
