"""The LAReQA evaluation protocol over full candidate pools (XQuAD-R, MLQA-R), exactly.

Roy et al. (2020), "LAReQA: Language-agnostic answer retrieval from a multilingual pool", EMNLP;
settings as in Elmahdy, Lin & Ahmad (2024), arXiv 2408.10536:

* **mono** — queries in X against the X-only pool, for each query language X;
* **cross** — queries in X against the Y-only pool, for each X != Y; a query without a relevant
  candidate in Y is skipped for that setting (so is a mono query without one in X);
* **multi** — queries in X against the union of all pools;
* **rank distance** — in the multi ranking, max rank - min rank of each query's relevant
  candidates, averaged per query language, then over languages.

Scores are inner products Q·Cᵀ in float32 (embeddings are L2-normalised by hbt-encode, so this is
cosine similarity). Rankings are full, never truncated; ties are broken as trec_eval does (docid
descending), so every number equals pytrec_eval on the equivalent full TREC run. Only the ranks of
the relevant candidates are computed: per pool, each score row is sorted once and the relevant
scores are located in it by binary search, which is exact and needs no argsort of the pools.

Every reported number is a mean of means, hence a fixed linear combination of per-query values;
:func:`statistics` lists those combinations, used both for the report and for paired
randomization tests between two systems (:mod:`hbt_tools.evaluation.significance`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io import InputError, sidecar_path
from ..metrics import RankedHits, average_precision, rank_distance, recall
from ..trec import Qrels

BLOCK_QUERIES = 512


@dataclass
class LareqaScores:
    """Per-query values of one system; ``setting_*`` arrays have one entry per (query, pool
    language) with a relevant candidate in that pool (mono when the languages agree)."""
    langs: list[str]                 # every query or candidate language, sorted
    query_ids: list[str]             # evaluated queries, sorted by (language, id)
    query_lang: np.ndarray           # per query: index into langs
    n_candidates: int
    setting_query: np.ndarray        # per setting unit: index into query_ids
    setting_lang: np.ndarray         # per setting unit: pool language (index into langs)
    setting_ap: np.ndarray
    setting_r1: np.ndarray
    multi_ap: np.ndarray             # per query
    multi_r10: np.ndarray            # per query
    rank_distance: np.ndarray        # per query

    def values(self, kind: str) -> np.ndarray:
        return getattr(self, kind)

    def report(self) -> dict:
        """The JSON report: mono, cross, multi, rank_distance, per_language, matrix."""
        out: dict = {"protocol": "lareqa", "queries": len(self.query_ids),
                     "candidates": self.n_candidates,
                     "languages": [self.langs[i] for i in np.unique(self.query_lang)]}
        for stat in statistics(self):
            value = float(np.dot(stat.weights, self.values(stat.kind)[stat.index]))
            set_path(out, stat.path, value)
        for name, count in setting_counts(self).items():
            out[name]["settings"] = count
        return out

    def per_query(self) -> dict:
        """``{qid: {"lang", "mono": {"ap", "r@1"}, "cross": {Y: {"ap", "r@1"}}, "multi":
        {"ap", "r@10"}, "rank_distance"}}`` (mono absent when the own-language pool has no
        relevant candidate)."""
        rows = {qid: {"lang": self.langs[lang], "cross": {}}
                for qid, lang in zip(self.query_ids, self.query_lang.tolist())}
        for q, lang, ap, r1 in zip(self.setting_query.tolist(), self.setting_lang.tolist(),
                                   self.setting_ap.tolist(), self.setting_r1.tolist()):
            row = rows[self.query_ids[q]]
            cell = {"ap": ap, "r@1": r1}
            if lang == self.query_lang[q]:
                row["mono"] = cell
            else:
                row["cross"][self.langs[lang]] = cell
        for qid, ap, r10, rd in zip(self.query_ids, self.multi_ap.tolist(),
                                    self.multi_r10.tolist(), self.rank_distance.tolist()):
            rows[qid]["multi"] = {"ap": ap, "r@10": r10}
            rows[qid]["rank_distance"] = rd
        return rows


@dataclass
class Statistic:
    """One reported number: ``sum(weights * values(kind)[index])``."""
    path: tuple
    kind: str
    index: np.ndarray
    weights: np.ndarray


def statistics(scores: LareqaScores) -> list[Statistic]:
    """Every reported number as a linear combination of per-query values (means of means)."""
    stats: list[Statistic] = []
    langs = scores.langs
    q_lang = scores.query_lang
    unit_x = q_lang[scores.setting_query]
    unit_y = scores.setting_lang
    cells = {}
    for x, y in sorted(set(zip(unit_x.tolist(), unit_y.tolist()))):
        members = np.flatnonzero((unit_x == x) & (unit_y == y))
        cells[x, y] = members
        stats.append(Statistic(("matrix", langs[x], langs[y]), "setting_ap", members,
                               _mean_weights(members)))
    query_langs = np.unique(q_lang).tolist()

    def macro(path, kind, groups):
        groups = [g for g in groups if len(g)]
        if groups:
            index = np.concatenate(groups)
            weights = np.concatenate([_mean_weights(g) for g in groups]) / len(groups)
            stats.append(Statistic(path, kind, index, weights))

    for metric, kind in (("map", "setting_ap"), ("r@1", "setting_r1")):
        macro(("mono", metric), kind, [cells.get((x, x), []) for x in query_langs])
        macro(("cross", metric), kind, [m for (x, y), m in cells.items() if x != y])
        for x in query_langs:
            macro(("per_language", langs[x], "mono", metric), kind, [cells.get((x, x), [])])
            macro(("per_language", langs[x], "cross", metric), kind,
                  [m for (qx, y), m in cells.items() if qx == x and y != x])
    by_lang = [np.flatnonzero(q_lang == x) for x in query_langs]
    for path, kind in ((("multi", "map"), "multi_ap"), (("multi", "r@10"), "multi_r10"),
                       (("rank_distance", "mean"), "rank_distance")):
        macro(path, kind, by_lang)
    for x, members in zip(query_langs, by_lang):
        macro(("per_language", langs[x], "multi", "map"), "multi_ap", [members])
        macro(("per_language", langs[x], "multi", "r@10"), "multi_r10", [members])
        macro(("per_language", langs[x], "rank_distance"), "rank_distance", [members])
        macro(("rank_distance", "per_language", langs[x]), "rank_distance", [members])
    return stats


def setting_counts(scores: LareqaScores) -> dict[str, int]:
    pairs = set(zip(scores.query_lang[scores.setting_query].tolist(),
                    scores.setting_lang.tolist()))
    mono = sum(x == y for x, y in pairs)
    return {"mono": mono, "cross": len(pairs) - mono,
            "multi": len(np.unique(scores.query_lang))}


def _mean_weights(members) -> np.ndarray:
    return np.full(len(members), 1.0 / len(members))


def set_path(tree: dict, path: tuple, value) -> None:
    """``tree[path[0]][path[1]]... = value``, creating the inner objects."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ---------------------------------------------------------------- computing the ranks

def evaluate_lareqa(queries: np.ndarray, query_rows: list[dict], corpus: np.ndarray,
                    corpus_rows: list[dict], qrels: Qrels, queries_path: str = "queries",
                    corpus_path: str = "corpus", qrels_path: str = "qrels") -> LareqaScores:
    """Run the whole protocol for one system (embeddings + sidecar rows from load_embeddings)."""
    if queries.shape[1] != corpus.shape[1]:
        raise InputError(f"query dimension {queries.shape[1]} differs from the corpus "
                         f"dimension {corpus.shape[1]} ({corpus_path})", queries_path)
    _require_langs(query_rows, queries_path)
    _require_langs(corpus_rows, corpus_path)
    langs = sorted({r["lang"] for r in query_rows} | {r["lang"] for r in corpus_rows})
    lang_index = {lang: i for i, lang in enumerate(langs)}

    # candidates grouped by language: each pool is a contiguous slice
    cand_lang = np.array([lang_index[r["lang"]] for r in corpus_rows], dtype=np.int64)
    cand_order = np.argsort(cand_lang, kind="stable")
    pool_bounds = np.searchsorted(cand_lang[cand_order], np.arange(len(langs) + 1))
    cand_ids = [corpus_rows[i]["id"] for i in cand_order]
    position_of_id = {cid: i for i, cid in enumerate(cand_ids)}
    id_order = np.empty(len(cand_ids), dtype=np.int64)     # ascending docid order (for ties)
    id_order[sorted(range(len(cand_ids)), key=cand_ids.__getitem__)] = np.arange(len(cand_ids))

    # evaluated queries (>= 1 relevant candidate), sorted by (language, id)
    pair_query, pair_cand, evaluated = [], [], []
    for row_index, row in sorted(enumerate(query_rows),
                                 key=lambda item: (item[1]["lang"], item[1]["id"])):
        relevant = [d for d, grade in qrels.get(row["id"], {}).items() if grade > 0]
        if not relevant:
            continue
        for docid in relevant:
            if docid not in position_of_id:
                raise InputError(f"relevant docid {docid!r} of query {row['id']!r} is not in "
                                 f"the corpus ({sidecar_path(corpus_path)})", qrels_path)
            pair_query.append(len(evaluated))
            pair_cand.append(position_of_id[docid])
        evaluated.append(row_index)
    if not evaluated:
        raise InputError("no query in the query embeddings has a relevant candidate in the qrels",
                         qrels_path)
    pair_query = np.asarray(pair_query, dtype=np.int64)
    pair_cand = np.asarray(pair_cand, dtype=np.int64)
    pair_lang = cand_lang[cand_order][pair_cand]

    query_matrix = np.asarray(queries[evaluated], dtype=np.float32)
    cand_matrix = np.ascontiguousarray(np.asarray(corpus, dtype=np.float32)[cand_order])
    pool_rank, multi_rank = _relevant_ranks(query_matrix, cand_matrix, pool_bounds, id_order,
                                            pair_query, pair_cand, pair_lang)

    n_queries = len(evaluated)
    query_lang = np.array([lang_index[query_rows[i]["lang"]] for i in evaluated], dtype=np.int64)
    setting_key, setting_of_pair = np.unique(pair_query * len(langs) + pair_lang,
                                             return_inverse=True)
    ones = np.ones(len(pair_query))
    pools = RankedHits.build(len(setting_key), setting_of_pair, pool_rank, ones,
                             setting_of_pair, ones)
    multi = RankedHits.build(n_queries, pair_query, multi_rank, ones, pair_query, ones)
    return LareqaScores(
        langs=langs, query_ids=[query_rows[i]["id"] for i in evaluated], query_lang=query_lang,
        n_candidates=len(cand_ids), setting_query=setting_key // len(langs),
        setting_lang=setting_key % len(langs), setting_ap=average_precision(pools),
        setting_r1=recall(pools, 1), multi_ap=average_precision(multi),
        multi_r10=recall(multi, 10), rank_distance=rank_distance(multi))


def _require_langs(rows: list[dict], npy_path: str) -> None:
    for i, row in enumerate(rows):
        if row["lang"] is None:
            raise InputError("missing (the protocol needs each row's language)",
                             sidecar_path(npy_path), i + 1, "lang")


def _relevant_ranks(queries, candidates, pool_bounds, id_order, pair_query, pair_cand,
                    pair_lang):
    """For each (query, relevant candidate) pair: its rank in its own language's pool and in
    the union of all pools; trec_eval order (score desc, docid desc)."""
    n_langs = len(pool_bounds) - 1
    pool_rank = np.zeros(len(pair_query), dtype=np.int64)
    multi_rank = np.zeros(len(pair_query), dtype=np.int64)
    pair_starts = np.searchsorted(pair_query, np.arange(0, len(queries) + BLOCK_QUERIES,
                                                        BLOCK_QUERIES))
    for block, start in enumerate(range(0, len(queries), BLOCK_QUERIES)):
        pairs = slice(pair_starts[block], pair_starts[block + 1])
        scores = queries[start:start + BLOCK_QUERIES] @ candidates.T
        scores += np.float32(0.0)                          # -0.0 -> +0.0: equal scores, equal keys
        rows = pair_query[pairs] - start
        target = scores[rows, pair_cand[pairs]]
        above = np.zeros((len(rows), n_langs), dtype=np.int64)   # strictly higher scores
        tied = np.zeros((len(rows), n_langs), dtype=np.int64)    # equal scores, self included
        wanted = _row_keys(target, rows)
        for lang in range(n_langs):
            lo, hi = pool_bounds[lang], pool_bounds[lang + 1]
            if hi == lo:
                continue
            keys = _row_keys(np.sort(scores[:, lo:hi], axis=1))
            first = np.searchsorted(keys, wanted, side="left")
            after = np.searchsorted(keys, wanted, side="right")
            above[:, lang] = (rows + 1) * (hi - lo) - after
            tied[:, lang] = after - first
        tied[np.arange(len(rows)), pair_lang[pairs]] -= 1
        for i in np.flatnonzero(tied.any(axis=1)).tolist():
            above[i] += _tied_above(scores[rows[i]], target[i], pair_cand[pairs][i], id_order,
                                    pool_bounds, np.flatnonzero(tied[i]))
        own = above[np.arange(len(rows)), pair_lang[pairs]]
        pool_rank[pairs] = own + 1
        multi_rank[pairs] = above.sum(axis=1) + 1
    return pool_rank, multi_rank


def _tied_above(row, score, cand, id_order, pool_bounds, langs) -> np.ndarray:
    """Per language: candidates with exactly ``score`` whose docid sorts after ``cand``'s
    (trec_eval puts them first)."""
    out = np.zeros(len(pool_bounds) - 1, dtype=np.int64)
    for lang in langs.tolist():
        lo = pool_bounds[lang]
        equal = np.flatnonzero(row[lo:pool_bounds[lang + 1]] == score) + lo
        out[lang] = np.count_nonzero(id_order[equal] > id_order[cand])
    return out


def _row_keys(values: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Int64 keys ordered as (row, float value): a sorted (rows x n) float32 block becomes one
    globally sorted key array, so one searchsorted serves every row."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.int32)
    ordered = (bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))).astype(np.int64) + (1 << 31)
    if rows is None:
        rows = np.arange(values.shape[0])[:, None]
    return ((rows.astype(np.int64) << 32) + ordered).ravel()
