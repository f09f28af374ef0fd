"""hbt-prepare: public data -> the toolkit's JSONL (eval sets and parallel training pairs).

A thin layer over :mod:`hbt_tools.data`; see there for formats, id schemes and rules.
"""
from __future__ import annotations

import click

from ..cli import HbtCommand, group, output_option
from ..data.evalset import write_eval_files
from ..data.lareqa import POSITIVE_KINDS, build_eval_set, iter_pairs
from ..data.miracl import prepare_miracl
from ..data.squad import parse_articles
from ..io import atomic_output, parse_langs, write_jsonl

LANGS_HELP = "Comma-separated languages (file names {lang}.json[.gz]); default: all."
ARTICLES_HELP = ("Python-style slice of each file's articles, e.g. 0:36 (train) or 36: (held-out "
                 "eval); default: all. XQuAD-R's files hold the same articles in the same order, "
                 "so a slice is parallel across languages; MLQA-R's files do not (there a slice "
                 "picks different articles per language).")


def _subcommand(name: str, example: str):
    return main.command(name, cls=HbtCommand, epilog="Example:\n" + example)


@group("hbt-prepare", example="""\
hbt-prepare lareqa examples/data/xquad-r -o xquad-r-eval
hbt-prepare pairs examples/data/xquad-r --articles 0:36 -o pairs.jsonl
hbt-prepare miracl --topics topics.tsv --qrels qrels.tsv --corpus docs.jsonl.gz --lang sw -o sw
""")
def main():
    """Convert public data (LAReQA, SQuAD-format, MIRACL) to the toolkit's JSONL files."""


@_subcommand("lareqa", example="""\
hbt-prepare lareqa examples/data/xquad-r -o xquad-r-eval
hbt-prepare lareqa ../shared/data/mlqa-r --langs ar,de,en -o mlqa-r-eval
""")
@click.argument("directory")
@click.option("-o", "--output", "out_dir", required=True,
              help="Output folder: queries.jsonl, corpus.jsonl, qrels.trec.")
@click.option("--langs", help=LANGS_HELP)
@click.option("--articles", help=ARTICLES_HELP)
def lareqa(directory, out_dir, langs, articles):
    """LAReQA pools from a folder of {lang}.json[.gz] files (XQuAD-R, MLQA-R).

    Candidates are all sentences of every paragraph in every language (text = sentence, context =
    paragraph); a candidate is relevant to a question when it holds the answer start of a question
    with the same id in any language. Ids: query {lang}-{question id} (group = question id);
    candidate {lang}-{article}-{paragraph}-{sentence} (0-based, indices of the full file).
    """
    pools = build_eval_set(directory, parse_langs(langs), parse_articles(articles))
    write_eval_files(out_dir, pools.queries, pools.qrels, pools.corpus)
    relevant = pools.relevant_counts()
    click.echo(f"hbt-prepare: {out_dir}: {len(pools.queries)} queries, {len(pools.corpus)} "
               f"candidates, {min(relevant)}-{max(relevant)} relevant per query", err=True)


@_subcommand("pairs", example="""\
hbt-prepare pairs examples/data/xquad-r --articles 0:36 -o pairs.jsonl
hbt-prepare pairs squad-translations/ --positive paragraph --source squad-mt -o pairs.jsonl
""")
@click.argument("directories", nargs=-1, required=True)
@output_option
@click.option("--langs", help=LANGS_HELP)
@click.option("--articles", help=ARTICLES_HELP)
@click.option("--positive", default="sentence", show_default=True,
              help=f"Positive passage ({' or '.join(POSITIVE_KINDS)}): the answer's sentence "
                   "(LAReQA sentence_breaks, else a simple punctuation splitter), its whole "
                   "paragraph, or the sentence followed by its paragraph (as LAReQA candidates "
                   "are encoded).")
@click.option("--source", help="Dataset name for the 'source' field; default: each folder's name.")
def pairs(directories, output, langs, articles, positive, source):
    """Parallel training pairs (pairs.jsonl) from folders of {lang}.json[.gz] SQuAD-format files.

    One line per language version of a question: {"group": question id, "lang", "query",
    "positive", "source"}; versions sharing a question id are parallel.
    """
    rows = iter_pairs(list(directories), parse_langs(langs), parse_articles(articles), positive,
                      source)
    with atomic_output(output) as fh:
        count = write_jsonl(fh, rows)
    click.echo(f"hbt-prepare: {count} pairs", err=True)


@_subcommand("miracl", example="""\
D=../shared/data/miracl-mini
hbt-prepare miracl --topics $D/topics.dev-subset.sw.tsv --qrels $D/qrels.dev-subset.sw.tsv \\
    --corpus $D/corpus.sw.jsonl --lang sw -o miracl-mini-sw
""")
@click.option("--topics", required=True,
              help="Topics TSV: qid<TAB>text.")
@click.option("--qrels", required=True,
              help="TREC qrels (tabs or spaces, Q0 accepted).")
@click.option("--corpus", multiple=True,
              help="Passages .jsonl[.gz] with docid, title, text (repeatable; streamed; "
                   "- = stdin).")
@click.option("--lang", required=True, help="Language code written to every row.")
@click.option("-o", "--output", "out_dir", required=True,
              help="Output folder: queries.jsonl, qrels.trec, corpus.jsonl (with --corpus).")
def miracl(topics, qrels, corpus, lang, out_dir):
    """MIRACL topics, qrels and (optionally) corpus -> an evaluation set with MIRACL's own ids.

    Corpus rows: {"id": docid, "text": title + " " + text, "title", "lang"}.
    """
    summary = prepare_miracl(out_dir, topics, qrels, lang, list(corpus))
    message = f"{summary['queries']} queries, {summary['judgements']} judgements"
    if corpus:
        message += f", {summary['passages']} passages"
        if summary["judged_missing"]:
            message += f" ({summary['judged_missing']} judged docids not in the corpus)"
    click.echo(f"hbt-prepare: {out_dir}: {message}", err=True)
