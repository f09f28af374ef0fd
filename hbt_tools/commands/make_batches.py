"""hbt-make-batches: parallel pairs -> training batches, one JSON line per step."""
import sys

import click

from ..batching import (DATASET_SAMPLING, STRATEGIES, BatchSampler, check_run_length,
                        count_steps, open_datasets)
from ..cli import command, output_option
from ..io import atomic_output, display_name, dumps_jsonl, parse_langs

EXAMPLE = """\
hbt-prepare pairs examples/data/xquad-r --articles 0:36 -o pairs.jsonl
hbt-make-batches pairs.jsonl --strategy hybrid --alpha 0.5 --batch-size 100 --epochs 1 --seed 0 -o batches.jsonl
hbt-make-batches pairs.jsonl --strategy cross --batch-size 32 --steps 5 --seed 1 --langs de,en,zh | head -n 1
"""


@command("hbt-make-batches", example=EXAMPLE)
@click.argument("pairs", nargs=-1, required=True)
@output_option
@click.option("--strategy", type=click.Choice(STRATEGIES), default="hybrid", show_default=True,
              help="mono: one language per batch (drawn uniformly); cross: every query's language "
                   "differs from its positive's; hybrid: mono with probability --alpha, else cross; "
                   "mixed: same-language items, languages mixed within a batch.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="hybrid: probability that a batch is monolingual.")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True,
              help="Items per batch (distinct groups).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Exactly this many batches.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="E epochs = E x sum over files of floor(usable groups / batch size) batches.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Same inputs, options and seed give byte-identical output.")
@click.option("--langs", default=None, help="Use only these languages, e.g. 'ar,de,en'.")
@click.option("--dataset-sampling", type=click.Choice(DATASET_SAMPLING), default="proportional",
              show_default=True,
              help="With several PAIRS files (datasets), how each batch's file is drawn: "
                   "proportional to its usable groups, uniform, or temperature (groups^T).")
@click.option("--temperature", type=click.FloatRange(min=0.0, min_open=True), default=1.0,
              show_default=True, help="T for --dataset-sampling temperature: weights groups^T\n(1 = proportional, smaller = flatter).")
def cli(pairs, output, strategy, alpha, batch_size, steps, epochs, seed, langs, dataset_sampling,
        temperature):
    """Make training batches from parallel pairs (PAIRS: pairs.jsonl files, '-' = stdin).

    Each PAIRS file is one dataset. A batch comes from one dataset and never holds two items of
    one group (lines sharing "group" are translations). A dataset is used in passes: a pass
    shuffles its groups and uses each at most once. A mono batch in language L takes only groups
    that have L (languages with fewer groups than --batch-size are left out of the draw); a cross
    batch only groups with two or more languages, each item's (query, positive) language pair
    drawn uniformly among its group's languages. A pass ends when the drawn batch can no longer be
    filled from its unused groups; on fully parallel data one pass is one epoch. Negatives come
    from the positive's line.

    Writes one batch per line: {"step", "kind", "dataset", "items": [{"group", "query",
    "query_lang", "positive", "positive_lang", "negatives"}]}.
    """
    from tqdm import tqdm

    check_run_length(steps, epochs)
    with open_datasets(pairs, parse_langs(langs)) as indexes:
        sampler = BatchSampler(indexes, strategy, alpha, batch_size, seed, dataset_sampling,
                               temperature)
        total = count_steps(sampler, steps, epochs)
        for note in sampler.notes:
            click.echo(f"hbt-make-batches: note: {note}", err=True)
        with atomic_output(output) as out, \
                tqdm(total=total, unit="batch", file=sys.stderr, disable=None) as bar:
            for step, batch in enumerate(sampler.batches(total)):
                out.write(dumps_jsonl({"step": step, **batch}))
                bar.update()
        for index, passes in zip(indexes, sampler.passes):
            click.echo(f"hbt-make-batches: {display_name(index.path)}: {index.n_groups} groups in "
                       f"{len(index.langs)} languages, {passes} pass{'' if passes == 1 else 'es'}",
                       err=True)


def main():
    cli()
