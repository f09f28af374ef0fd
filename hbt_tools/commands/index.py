"""hbt-index: NAME.npy (+ NAME.ids.jsonl) -> index directory (thin layer over
:func:`hbt_tools.indexing.index_embeddings`)."""
import click

from ..cli import command, quiet_option
from ..indexing import INDEX_TYPES, IndexSettings, index_embeddings
from ..io import InputError

EXAMPLE = """\
hbt-index corpus.npy -o corpus.index
hbt-index corpus.npy -o corpus.hnsw --type hnsw --hnsw-m 32 --ef-construction 200
hbt-index miracl-en.0.npy -o miracl-en.0.ivfpq --type ivfpq --nlist 16384 --pq-m 48
"""

_TYPE_OPTIONS = {"hnsw_m": "hnsw", "ef_construction": "hnsw", "nlist": "ivfpq",
                 "pq_m": "ivfpq", "nbits": "ivfpq", "train_size": "ivfpq"}


@command("hbt-index", example=EXAMPLE)
@click.argument("embeddings", metavar="EMB.npy")
@click.option("-o", "--output", required=True, metavar="INDEX",
              help="Index directory (meta.json, index.faiss, ids.jsonl); built under a hidden "
                   "temporary name and renamed into place when complete. An existing index "
                   "there is replaced.")
@click.option("--type", "index_type", type=click.Choice(INDEX_TYPES), default="flat",
              show_default=True,
              help="flat = exact inner product; hnsw, ivfpq = approximate, for large corpora.")
@click.option("--hnsw-m", type=click.IntRange(min=2), default=None,
              help="hnsw: graph neighbours per node [32].")
@click.option("--ef-construction", type=click.IntRange(min=1), default=None,
              help="hnsw: candidate list size while building [200].")
@click.option("--nlist", type=click.IntRange(min=1), default=None,
              help="ivfpq: inverted lists [4·sqrt(rows), at most rows/39].")
@click.option("--pq-m", type=click.IntRange(min=1), default=None,
              help="ivfpq: sub-quantisers, a divisor of the dim [dim/8].")
@click.option("--nbits", type=click.IntRange(min=1, max=16), default=None,
              help="ivfpq: bits per sub-quantiser code [8].")
@click.option("--train-size", type=click.IntRange(min=1), default=None,
              help="ivfpq: rows sampled to train the quantisers [min(rows, 256·nlist)].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="ivfpq: seed of the training sample and k-means.")
@quiet_option
def cli(embeddings, output, index_type, seed, quiet, **type_options):
    """Index embeddings (NAME.npy + NAME.ids.jsonl, as hbt-encode writes them) with faiss.

    Ids and languages travel with the index, so hbt-search needs only INDEX and the queries.
    Scores are inner products of the vectors as stored (cosine for normalised embeddings).
    """
    if output == "-":
        raise InputError("an index is a directory: -o needs a path, not '-'")
    given = {name: value for name, value in type_options.items() if value is not None}
    for name in given:
        if _TYPE_OPTIONS[name] != index_type:
            raise InputError(f"--{name.replace('_', '-')} applies to --type "
                             f"{_TYPE_OPTIONS[name]}, not {index_type}")
    meta = index_embeddings(embeddings, output, IndexSettings(type=index_type, seed=seed, **given),
                            progress=not quiet)
    click.echo(f"hbt-index: {meta['count']} rows of dim {meta['dim']} -> {output} "
               f"({meta['type']})", err=True)


def main():
    cli()
