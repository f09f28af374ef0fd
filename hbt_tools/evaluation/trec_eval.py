"""Score TREC runs exactly as trec_eval (and pytrec_eval) does.

Conventions matched (checked against pytrec_eval by randomized tests):

* a document is relevant when its qrels grade is >= 1; negative grades count as 0 gain;
* each query's ranking is the run's documents sorted by score descending, ties broken by docid
  descending (byte order, as ``strcmp``); scores are compared as 32-bit floats, as trec_eval
  stores them, so scores that differ only beyond float precision tie;
* the given ranks in the run file are ignored;
* a query is evaluated when it appears both in the run and in the qrels — also when all its
  judgments are 0 (its scores are then 0); queries only in the qrels or only in the run are left
  out; means are taken over the evaluated queries (trec_eval without ``-c``).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from ..metrics import Metric, RankedHits
from ..trec import Qrels, RunColumns, hash_byte_strings, may_be_in


@dataclass
class RunScores:
    """Per-query values of each metric for the evaluated queries of one run."""
    run: str
    query_ids: list[str]                 # evaluated queries, in run order
    per_query: dict[str, np.ndarray]     # metric label -> value per evaluated query

    def means(self) -> dict[str, float]:
        return {label: float(values.mean()) if len(values) else 0.0
                for label, values in self.per_query.items()}


def evaluate_run(run: RunColumns, qrels: Qrels, metrics: list[Metric]) -> RunScores:
    query_ids, hits = rank_relevant(run, qrels)
    return RunScores(run.path, query_ids, {m.label: m(hits) for m in metrics})


def rank_relevant(run: RunColumns, qrels: Qrels) -> tuple[list[str], RankedHits]:
    """The evaluated queries and the trec_eval ranks of their retrieved relevant documents."""
    evaluated = [i for i, qid in enumerate(run.query_ids) if qid in qrels]
    query_ids = [run.query_ids[i] for i in evaluated]
    unit_of_query = np.full(len(run.query_ids), -1, dtype=np.int64)
    unit_of_query[evaluated] = np.arange(len(evaluated))

    relevant = [{d.encode(): g for d, g in qrels[qid].items() if g > 0} for qid in query_ids]
    relevant_docids = list(set().union(*relevant)) if relevant else []
    line_unit = unit_of_query[run.query_index]
    candidate = (may_be_in(run.docids.hashes, hash_byte_strings(relevant_docids))
                 & (line_unit >= 0))
    hit_lines, hit_grades = [], []
    for line in np.flatnonzero(candidate).tolist():
        grade = relevant[line_unit[line]].get(run.docids[line])
        if grade is not None:
            hit_lines.append(line)
            hit_grades.append(grade)
    hit_lines = np.asarray(hit_lines, dtype=np.int64)
    ranks = _trec_eval_ranks(run, hit_lines)

    ideal_query = np.repeat(np.arange(len(relevant)), [len(r) for r in relevant])
    ideal_grade = [g for r in relevant for g in r.values()]
    return query_ids, RankedHits.build(len(query_ids), line_unit[hit_lines], ranks, hit_grades,
                                       ideal_query, ideal_grade)


def _trec_eval_ranks(run: RunColumns, lines: np.ndarray) -> np.ndarray:
    """1-based rank of each given run line within its query: score desc, then docid desc."""
    if not len(lines):
        return np.zeros(0, dtype=np.int64)
    with np.errstate(over="ignore", invalid="ignore"):      # huge scores become inf, as in C
        scores = run.scores.astype(np.float32)
        query = run.query_index
        in_order = np.all((np.diff(query) > 0) | ((np.diff(query) == 0) &
                                                  (np.diff(scores) <= 0)))
    order = np.arange(len(query)) if in_order else np.lexsort((-scores, query))
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    sorted_query, sorted_scores = query[order], scores[order]

    new_query = np.ones(len(order), dtype=bool)
    new_query[1:] = sorted_query[1:] != sorted_query[:-1]
    new_tie_group = new_query.copy()
    new_tie_group[1:] |= sorted_scores[1:] != sorted_scores[:-1]
    query_starts = np.flatnonzero(new_query)
    group_starts = np.flatnonzero(new_tie_group)
    group_ends = np.append(group_starts[1:], len(order))

    where = position[lines]
    group = np.cumsum(new_tie_group)[where] - 1
    query_start = query_starts[np.cumsum(new_query)[where] - 1]
    ranks = group_starts[group] - query_start + 1
    tied_groups: dict[int, list[bytes]] = {}
    for i in np.flatnonzero(group_ends[group] - group_starts[group] > 1).tolist():
        g = int(group[i])
        if g not in tied_groups:
            members = order[group_starts[g]:group_ends[g]].tolist()
            tied_groups[g] = sorted(run.docids[m] for m in members)
        tied = tied_groups[g]
        ranks[i] += len(tied) - bisect.bisect_right(tied, run.docids[lines[i]])
    return ranks
