"""hbt-encode: JSONL texts -> NAME.npy embeddings + NAME.ids.jsonl (thin layer over
:func:`hbt_tools.encoding.encode_file`)."""
import signal

import click

from ..cli import command, quiet_option
from ..encoding import DEFAULT_FIELDS, FIELD_PRESETS, KINDS, OUTPUT_DTYPES
from .model_options import model_settings_options

EXAMPLE = """\
hbt-encode --model multilingual-e5-small --kind query queries.jsonl -o q.npy
hbt-encode --model runs/hybrid --kind passage --fields lareqa corpus.jsonl -o c.npy
hbt-encode --model runs/hybrid --kind passage --template "{title}: {text}" \\
    --shard 0/4 corpus.en.jsonl -o c.en.0.npy
"""


@command("hbt-encode", example=EXAMPLE)
@click.argument("input_path", metavar="[INPUT]", default="-")
@click.option("--model", required=True,
              help="Model folder (hbt-train output or any Hugging Face folder), a hub name, or "
                   "'multilingual-e5-small' (built in; needs hbt-tools[offline]).")
@click.option("--kind", type=click.Choice(KINDS), required=True,
              help="Texts are queries or passages (picks the prefix and the max length).")
@click.option("-o", "--output", required=True, metavar="OUT.npy",
              help="Embeddings file; OUT.ids.jsonl (id, lang per row) is written beside it. "
                   "Both appear only when complete.")
@click.option("--fields", default=None,
              help="Row fields joined by a space to make the text; 'name?' may be absent. "
                   f"Default: '{DEFAULT_FIELDS['query']}' for queries, "
                   f"'{DEFAULT_FIELDS['passage']}' for passages (LAReQA candidates get their "
                   "context, MIRACL passages their title). Presets: "
                   + ", ".join(f"{k} = {v}" for k, v in FIELD_PRESETS.items()) + ".")
@click.option("--template", default=None,
              help="Text as a template of row fields instead, e.g. '{title}: {text}'.")
@model_settings_options
@click.option("--max-length", type=click.IntRange(min=2), default=None,
              help="Max length in tokens for this --kind (overrides both of the above).")
@click.option("--output-dtype", type=click.Choice(tuple(OUTPUT_DTYPES)), default="float32",
              show_default=True, help="Precision of the stored embeddings.")
@click.option("--batch-size", type=int, default=256, show_default=True,
              help="Max texts per forward pass.")
@click.option("--batch-tokens", type=int, default=None,
              help="Max padded tokens per forward pass (texts are batched by length). "
                   "Default: 4096 on the CPU, 16384 on a GPU.")
@click.option("--chunk-size", type=int, default=8192, show_default=True,
              help="Rows read, sorted by length and encoded together (memory bound).")
@click.option("--shard", default=None, metavar="I/N",
              help="Encode only rows with index % N == I (0-based), e.g. 0/4 ... 3/4; one "
                   "process per GPU: CUDA_VISIBLE_DEVICES=I hbt-encode --shard I/N ...")
@quiet_option
def cli(input_path, model, kind, output, fields, template, pooling, query_prefix, passage_prefix,
        max_query_length, max_passage_length, max_length, dtype, output_dtype, batch_size,
        batch_tokens, chunk_size, shard, device, trust_remote_code, quiet):
    """Encode JSONL rows ({"id", "text", "lang", ...}) into embeddings with a bi-encoder.

    INPUT is a JSONL file ('-' or omitted = stdin). OUT.npy row i is line i of OUT.ids.jsonl.
    Prefixes, pooling and max lengths come from the model's hbt_retrieval.json unless overridden.
    """
    from ..encoding import encode_file

    # A scheduler's SIGTERM unwinds like an error: the temporary files are removed.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if max_length is not None:
        if kind == "query":
            max_query_length = max_length
        else:
            max_passage_length = max_length
    summary = encode_file(
        model, input_path, output, kind, fields=fields, template=template, dtype=dtype,
        device=device, batch_size=batch_size, batch_tokens=batch_tokens, chunk_rows=chunk_size,
        shard=shard, output_dtype=output_dtype, trust_remote_code=trust_remote_code,
        pooling=pooling, query_prefix=query_prefix, passage_prefix=passage_prefix,
        max_query_length=max_query_length, max_passage_length=max_passage_length,
        progress=not quiet)
    rate = summary.tokens / summary.seconds if summary.seconds > 0 else 0.0
    click.echo(f"hbt-encode: {summary.rows} rows x {summary.dim} -> {summary.output} "
               f"({summary.dtype} on {summary.device}, {summary.tokens} tokens in "
               f"{summary.seconds:.1f}s, {rate:,.0f} tokens/s)", err=True)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main():
    cli()
