"""Options shared by the commands that run a network (hbt-train, hbt-encode).

Each defaults to None, meaning "the model's hbt_retrieval.json, else its family's default", so
a trained model needs no flags; a flag overrides the saved setting.
"""
import click

from ..models.settings import POOLINGS

_OPTIONS = [
    click.option("--pooling", type=click.Choice(POOLINGS), default=None,
                 help="Default: the model's hbt_retrieval.json, else by family (mean for XLM-R, "
                      "mE5, mBART, mT5; CLS for BERT/LaBSE)."),
    click.option("--query-prefix", default=None,
                 help='Default: the model\'s settings, else "query: ".'),
    click.option("--passage-prefix", default=None,
                 help='Default: the model\'s settings, else "passage: ".'),
    click.option("--max-query-length", type=click.IntRange(min=2), default=None,
                 help="Tokens per query. Default: the model's settings, else 64."),
    click.option("--max-passage-length", type=click.IntRange(min=2), default=None,
                 help="Tokens per passage. Default: the model's settings, else 256."),
    click.option("--dtype", type=click.Choice(["auto", "bf16", "fp32"]), default="auto",
                 show_default=True,
                 help="Compute precision; auto = bf16 where the hardware is fast at it "
                      "(AMX / AVX512-BF16 CPUs, Ampere+ GPUs)."),
    click.option("--device", default="auto", show_default=True,
                 help="cpu, cuda or cuda:N; auto = the GPU where torch sees one, else the CPU "
                      "(under torchrun each process takes cuda:LOCAL_RANK)."),
    click.option("--trust-remote-code", is_flag=True,
                 help="Allow Python code shipped with a hub model (off by default)."),
]


def model_settings_options(func):
    for option in reversed(_OPTIONS):
        func = option(func)
    return func
