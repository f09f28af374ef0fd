"""hbt-search: query embeddings x index shard(s) -> TREC run (thin layer over
:func:`hbt_tools.search.search_to_run`)."""
from ..thread_pools import sleep_when_idle

sleep_when_idle()  # before numpy and faiss load (hbt_tools.cli imports numpy)

import click  # noqa: E402

from ..cli import command, output_option, quiet_option  # noqa: E402
from ..io import parse_langs  # noqa: E402
from ..search import search_to_run  # noqa: E402

EXAMPLE = """\
hbt-search --index corpus.index queries.npy -k 100 > run.trec
hbt-search --index corpus.index queries.npy --lang de -o run.de.trec --tag xx-de
hbt-search --index c.0.index --index c.1.index queries.npy -k 1000 | head
"""


@command("hbt-search", example=EXAMPLE)
@click.argument("queries", metavar="QUERIES.npy")
@click.option("--index", "index_dirs", required=True, multiple=True, metavar="INDEX",
              help="Index directory from hbt-index; repeat for shards (merged into one run).")
@click.option("-k", "k", type=click.IntRange(min=1), default=100, show_default=True,
              help="Hits per query.")
@click.option("--lang", default=None, metavar="L[,L2...]",
              help="Only passages in these languages are candidates (mono / cross pools).")
@output_option
@click.option("--tag", default="hbt", show_default=True, help="Run tag (last column).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Queries searched at a time (a batch's run is written while the next is "
                   "searched).")
@click.option("--ef-search", type=click.IntRange(min=1), default=128, show_default=True,
              help="hnsw: candidate list size while searching (at least k is used).")
@click.option("--nprobe", type=click.IntRange(min=1), default=16, show_default=True,
              help="ivfpq: inverted lists visited per query.")
@quiet_option
def cli(queries, index_dirs, k, lang, output, tag, batch_size, ef_search, nprobe, quiet):
    """Search QUERIES.npy (+ QUERIES.ids.jsonl) in INDEX and write a TREC run
    (qid Q0 docid rank score tag) to stdout or -o.

    Hits are ranked by printed score descending, then docid descending (trec_eval's order).
    Flat indexes give the exact top k, with or without --lang.
    """
    search_to_run(list(index_dirs), queries, output, k=k, langs=parse_langs(lang), tag=tag,
                  batch_size=batch_size, ef_search=ef_search, nprobe=nprobe,
                  progress=not quiet)


def main():
    cli()
