"""hbt-score: TREC runs (or embeddings, for the exact LAReQA protocol) -> metrics.

JSON output (``--format json``, the default):

* one run: ``{"run": PATH, "queries": N, "metrics": {NAME: mean}}`` with NAME exactly as given
  with ``-m``; ``--per-query`` adds ``"per_query": {qid: {NAME: value}}``; ``--by-lang F`` adds
  ``"by_lang": {lang: {"queries": N, "metrics": {NAME: mean}}}``;
* several runs: ``{"runs": {PATH: <the one-run object without "run">}}``;
* ``--compare A B``: ``{"compare": {"a": A, "b": B}, "queries", "permutations", "seed",
  "metrics": {NAME: {"a", "b", "difference" (B − A), "p_value"}}}``;
* ``--protocol lareqa``: ``{"protocol", "queries", "candidates", "languages", "mono": {"map",
  "r@1", "settings"}, "cross": {...}, "multi": {"map", "r@10", "settings"}, "rank_distance":
  {"mean", "per_language": {X: v}}, "per_language": {X: {"mono": {"map", "r@1"}, "cross":
  {...}, "multi": {"map", "r@10"}, "rank_distance"}}, "matrix": {X: {Y: mAP}}}``; with
  ``--compare`` (two ``--queries``/``--corpus`` pairs) every number becomes
  ``{"a", "b", "difference", "p_value"}``; with 2N pairs (A, B, A, B, ..., e.g. one A/B couple
  per training seed) each is the mean over the N couples, the test is stratified by couple,
  and ``"pairs": N`` is added.
"""
from __future__ import annotations

import click
import orjson

from ..cli import command, fail, output_option
from ..evaluation.lareqa import evaluate_lareqa
from ..evaluation.significance import compare_lareqa_pooled, compare_runs
from ..evaluation.tables import (compare_lareqa_tables, compare_run_table, lareqa_tables,
                                 run_tables)
from ..evaluation.trec_eval import RunScores, evaluate_run
from ..io import InputError, atomic_output, field, iter_jsonl, load_embeddings
from ..metrics import parse_metrics
from ..trec import read_qrels, read_run_columns

DEFAULT_METRICS = ("map", "mrr", "ndcg@10", "recall@100")

EXAMPLE = """\
hbt-score --qrels qrels.trec -m ndcg@10 -m recall@100 run.trec
hbt-score --qrels qrels.trec --by-lang queries.jsonl --format table run-a.trec run-b.trec
hbt-score --qrels qrels.trec --compare run-a.trec run-b.trec -m map
hbt-score --protocol lareqa --qrels xq/qrels.trec --queries q.npy --corpus c.npy --format table
hbt-score --protocol lareqa --compare --qrels xq/qrels.trec \\
    --queries a/q.npy --corpus a/c.npy --queries b/q.npy --corpus b/c.npy
hbt-score --protocol lareqa --compare --qrels xq/qrels.trec \\
    --queries a-s0/q.npy --corpus a-s0/c.npy --queries b-s0/q.npy --corpus b-s0/c.npy \\
    --queries a-s1/q.npy --corpus a-s1/c.npy --queries b-s1/q.npy --corpus b-s1/c.npy
"""


@command("hbt-score", EXAMPLE)
@click.argument("runs", nargs=-1, metavar="RUN...")
@click.option("--qrels", required=True, help="TREC qrels 'qid 0 docid rel' (rel >= 1 relevant).")
@click.option("-m", "--metric", "metrics", multiple=True,
              help="Metric (repeatable or comma-separated): map, map@k, ndcg, ndcg@k, "
                   "recall@k, p@k, mrr, mrr@k, r-prec; trec_eval names work too. "
                   f"Default: {' '.join(DEFAULT_METRICS)}.")
@click.option("--format", "fmt", type=click.Choice(["json", "table"]), default="json",
              show_default=True)
@click.option("--per-query", is_flag=True, help="Also give each query's values.")
@click.option("--by-lang", type=click.Path(dir_okay=False),
              help="queries.jsonl ({id, lang} rows): also give means per query language.")
@click.option("--protocol", type=click.Choice(["trec", "lareqa"]), default="trec",
              show_default=True,
              help="trec: score RUN files like trec_eval. lareqa: exact full-pool mono / cross / "
                   "multi evaluation from --queries and --corpus embeddings.")
@click.option("--queries", "query_files", multiple=True, metavar="Q.npy",
              help="lareqa: query embeddings (NAME.ids.jsonl beside it gives id and lang).")
@click.option("--corpus", "corpus_files", multiple=True, metavar="C.npy",
              help="lareqa: candidate embeddings (NAME.ids.jsonl beside it gives id and lang).")
@click.option("--compare", is_flag=True,
              help="Paired randomization test between two systems: two RUNs, or (lareqa) two "
                   "--queries/--corpus pairs; (lareqa) 2N pairs A, B, A, B, ... pool N "
                   "couples (e.g. seeds) into one stratified test.")
@click.option("--permutations", default=10_000, show_default=True, type=click.IntRange(1),
              help="Random sign flips for --compare.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for --compare.")
@click.option("--heatmap", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="lareqa: also draw the query x candidate language mAP matrix as a PNG "
                   "(needs matplotlib: hbt-tools[plot]).")
@output_option
def main(runs, qrels, metrics, fmt, per_query, by_lang, protocol, query_files, corpus_files,
         compare, permutations, seed, heatmap, output):
    """Score TREC runs exactly as trec_eval / pytrec_eval does, or run the exact LAReQA
    protocol (mono, cross, multi, rank distance, language-pair matrix) on full pools.

    Queries are averaged as trec_eval does: over the queries present in both the run and the
    qrels. With several RUNs the JSON holds {"runs": {RUN: {...}}}.
    """
    if heatmap and (protocol != "lareqa" or compare):
        fail("--heatmap draws one system's language-pair matrix: use it with --protocol lareqa, "
             "without --compare")
    if protocol == "lareqa":
        report, table = _lareqa(runs, qrels, metrics, by_lang, per_query, query_files,
                                corpus_files, compare, permutations, seed)
    else:
        report, table = _trec(runs, qrels, metrics, by_lang, per_query, query_files,
                              corpus_files, compare, permutations, seed)
    text = table(report).encode() if fmt == "table" else orjson.dumps(
        report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    with atomic_output(output) as fh:
        fh.write(text)
    if heatmap:
        from ..evaluation.plots import language_heatmap

        language_heatmap(report["matrix"], heatmap)


def _trec(runs, qrels_path, metric_names, by_lang, per_query, query_files, corpus_files,
          compare, permutations, seed):
    if query_files or corpus_files:
        fail("--queries/--corpus belong to --protocol lareqa")
    if not runs:
        fail("give at least one RUN file (or --protocol lareqa)")
    if len(set(runs)) != len(runs):
        fail("the same RUN file is given twice")
    if compare and len(runs) != 2:
        fail(f"--compare needs exactly two RUN files, got {len(runs)}")
    metrics = parse_metrics(metric_names or DEFAULT_METRICS)
    query_langs = _read_query_langs(by_lang) if by_lang else None
    qrels = read_qrels(qrels_path)
    scores = [evaluate_run(read_run_columns(path), qrels, metrics) for path in runs]
    if compare:
        return compare_runs(scores[0], scores[1], permutations, seed), compare_run_table
    results = {s.run: _run_result(s, per_query, query_langs, by_lang) for s in scores}
    if len(results) == 1:
        return {"run": runs[0], **results[runs[0]]}, lambda r: run_tables({r["run"]: r})
    return {"runs": results}, lambda r: run_tables(r["runs"])


def _run_result(scores: RunScores, per_query: bool, query_langs, by_lang_path) -> dict:
    result = {"queries": len(scores.query_ids), "metrics": scores.means()}
    if per_query:
        result["per_query"] = {qid: {m: float(v[i]) for m, v in scores.per_query.items()}
                               for i, qid in enumerate(scores.query_ids)}
    if query_langs is not None:
        groups: dict[str, list[int]] = {}
        for i, qid in enumerate(scores.query_ids):
            if qid not in query_langs:
                raise InputError(f"query {qid!r} of {scores.run} is not in this file",
                                 by_lang_path, field="id")
            groups.setdefault(query_langs[qid], []).append(i)
        result["by_lang"] = {
            lang: {"queries": len(groups[lang]),
                   "metrics": {m: float(v[groups[lang]].mean())
                               for m, v in scores.per_query.items()}}
            for lang in sorted(groups)}
    return result


def _read_query_langs(path) -> dict[str, str]:
    langs: dict[str, str] = {}
    for lineno, obj in iter_jsonl(path):
        qid = str(field(obj, "id", (str, int), path, lineno))
        if qid in langs:
            raise InputError(f"duplicate id {qid!r}", path, lineno, "id")
        langs[qid] = field(obj, "lang", str, path, lineno, nonempty=True)
    return langs


def _lareqa(runs, qrels_path, metric_names, by_lang, per_query, query_files, corpus_files,
            compare, permutations, seed):
    if runs:
        fail("--protocol lareqa takes no RUN files: it ranks --corpus for each of --queries")
    if metric_names or by_lang:
        fail("--protocol lareqa has fixed metrics and per-language rows: drop -m / --by-lang")
    if len(query_files) != len(corpus_files):
        fail(f"--protocol lareqa needs as many --queries as --corpus files, got "
             f"{len(query_files)} and {len(corpus_files)}")
    if compare and (len(query_files) < 2 or len(query_files) % 2):
        fail("--protocol lareqa --compare needs --queries/--corpus pairs for A and B (or for "
             f"A, B, A, B, ... to pool several seeds), got {len(query_files)}")
    if not compare and len(query_files) != 1:
        fail(f"--protocol lareqa scores one system: give one --queries and one --corpus file "
             f"(or --compare), got {len(query_files)}")
    qrels = read_qrels(qrels_path)
    scores = []
    for q_path, c_path in zip(query_files, corpus_files):
        queries, query_rows = load_embeddings(q_path)
        corpus, corpus_rows = load_embeddings(c_path)
        scores.append(evaluate_lareqa(queries, query_rows, corpus, corpus_rows, qrels,
                                      q_path, c_path, qrels_path))
    if compare:
        report = compare_lareqa_pooled(list(zip(scores[::2], scores[1::2])), permutations, seed)
        files = [{"queries": q, "corpus": c} for q, c in zip(query_files, corpus_files)]
        report["compare"] = ({"a": files[0], "b": files[1]} if len(files) == 2
                             else {"a": files[::2], "b": files[1::2]})
        return report, compare_lareqa_tables
    report = scores[0].report()
    if per_query:
        report["per_query"] = scores[0].per_query()
    return report, lareqa_tables
