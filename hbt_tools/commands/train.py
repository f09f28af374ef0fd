"""hbt-train: batches.jsonl (file or stdin) -> fine-tuned bi-encoder in a Hugging Face folder."""
from __future__ import annotations

import click

from ..cli import command, quiet_option
from .model_options import model_settings_options

EXAMPLE = """\
hbt-make-batches pairs.jsonl --strategy hybrid --batch-size 100 --steps 1000 --seed 0 | \\
  hbt-train --model multilingual-e5-small --output runs/hbt --max-steps 1000 -
hbt-train --model xlm-roberta-base --output runs/xlmr --validation dev-batches.jsonl \\
  --save-steps 200 batches.jsonl
hbt-train --model xlm-roberta-base --output runs/xlmr --resume batches.jsonl
torchrun --nproc_per_node 4 $(which hbt-train) --model xlm-roberta-base --output runs/ddp \\
  --chunk-size 64 batches.jsonl
hbt-encode --model runs/hbt --kind query queries.jsonl -o q.npy    # no flags needed
"""


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter("must be positive")
    return value


@command("hbt-train", example=EXAMPLE)
@click.argument("batches", default="-", required=False)
@click.option("--model", required=True,
              help="Hugging Face folder or hub name (e.g. xlm-roberta-base, LaBSE, "
                   "multilingual-e5-small, a saved hbt-train output).")
@click.option("--output", required=True, type=click.Path(file_okay=False),
              help="Output folder: final model, train_log.jsonl, checkpoint-STEP, best-STEP.")
@click.option("--max-steps", type=int, callback=_positive,
              help="Total optimizer steps (one batch line each). Default: every line of the "
                   "file; required when reading stdin, since the linear schedule needs the total.")
@click.option("--lr", type=float, default=3e-5, show_default=True, help="AdamW peak learning rate.")
@click.option("--weight-decay", type=float, default=0.01, show_default=True,
              help="AdamW weight decay (not applied to biases and norm weights).")
@click.option("--temperature", type=float, default=0.05, show_default=True,
              help="InfoNCE temperature τ (scores are cosine / τ).")
@click.option("--warmup-steps", type=int, default=0, show_default=True,
              help="Linear warm-up steps; then linear decay to 0 at the last step.")
@model_settings_options
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--save-steps", type=int, default=500, show_default=True,
              help="Write DIR/checkpoint-STEP every N steps (0 = never; only the latest is kept).")
@click.option("--resume", is_flag=True,
              help="Continue from the latest checkpoint in --output at the next batch line, "
                   "with optimizer, schedule and RNG state (give the same batches input).")
@click.option("--validation", type=click.Path(dir_okay=False),
              help="Batches file for validation loss; the best model by it is kept in "
                   "DIR/best-STEP and becomes the final model in DIR.")
@click.option("--eval-steps", type=int, callback=_positive,
              help="Validate every N steps (default: every --save-steps) and at the end.")
@click.option("--chunk-size", type=int, callback=_positive,
              help="Gradient caching: encode at most N texts at a time (memory of N, same "
                   "gradients as the whole batch). Each chunk is a forward pass more: on a GPU "
                   "use the largest N that fits (H200, batch 512: N=256 took 1.6-1.9x plain "
                   "time, N=32 4.5-6.4x).")
@quiet_option
def cli(batches, model, output, max_steps, lr, weight_decay, temperature, warmup_steps, pooling,
        query_prefix, passage_prefix, max_query_length, max_passage_length, dtype, seed,
        save_steps, resume, validation, eval_steps, chunk_size, device, trust_remote_code,
        quiet):
    """Fine-tune a shared-weight bi-encoder on BATCHES (batches.jsonl, one step per line;
    '-' = stdin) with InfoNCE over every in-batch passage.

    Writes the final model into DIR as a Hugging Face folder (safetensors + tokenizer +
    hbt_retrieval.json, so hbt-encode needs no flags) and one JSON line per step into
    DIR/train_log.jsonl. Under torchrun, ranks share each batch line and gather embeddings,
    so N processes compute the same loss and gradients as one.
    """
    from ..training.config import TrainConfig
    from ..training.preflight import preflight

    config = TrainConfig(
        model=model, output=output, batches=batches, max_steps=max_steps, lr=lr,
        weight_decay=weight_decay, temperature=temperature, warmup_steps=warmup_steps,
        pooling=pooling, query_prefix=query_prefix, passage_prefix=passage_prefix,
        max_query_length=max_query_length, max_passage_length=max_passage_length, dtype=dtype,
        seed=seed, save_steps=save_steps, resume=resume, validation=validation,
        eval_steps=eval_steps, chunk_size=chunk_size, device=device,
        trust_remote_code=trust_remote_code, progress=not quiet)
    checked_lines = preflight(config)  # bad input fails here, before torch loads

    from ..training.trainer import train

    train(config, checked_lines)


def main():
    cli()
