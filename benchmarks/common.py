"""Shared pieces of the benchmark scripts: machine description, timing summaries, result files.

Every script writes ``benchmarks/results/NAME.json`` (or ``--json PATH``) with the same shape,
which ``make_docs.py`` turns into ``docs/benchmarks.md``::

    {"benchmark": NAME, "title": ..., "date": ..., "machine": {...}, "setup": "...",
     "repeats": 3, "rows": [{"what", "median", "min", "max", "unit", ...}],
     "targets": [{"what", "peer", "target", "measured", "value", "goal", "higher_is_better",
                  "pass"}],
     ...script-specific raw data...}
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
XQUAD_R = os.path.join(os.path.dirname(ROOT), "shared", "data", "xquad-r")   # SPEC: ../shared


@contextlib.contextmanager
def model_bench_dirs(args):
    """``(built-in model folder, temporary dir, workdir)``; prepared inputs go to --workdir when
    given (kept and reused), else into the temporary dir."""
    sys.path.insert(0, ROOT)
    from hbt_tools.models.offline import builtin_model_dir

    folder = builtin_model_dir()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        yield folder, tmp, workdir


def st_model(folder: str, max_length: int, model_kwargs: dict | None = None,
             device: str = "cpu"):
    """sentence-transformers' model (mean pooling, normalised) with the folder's tokenizer.json
    as written, so that it encodes the same tokens as hbt-tools: transformers 5's
    XLMRobertaTokenizer class drops the folder's NFKC normalizer (full-width punctuation becomes
    <unk>). Works with sentence-transformers 6.0 (on the GPU machine) and 6.2."""
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedTokenizerFast
    try:
        from sentence_transformers.sentence_transformer.modules import (Normalize, Pooling,
                                                                        Transformer)
    except ImportError:  # sentence-transformers < 6.2
        from sentence_transformers.models import Normalize, Pooling, Transformer

    transformer = Transformer(folder, max_seq_length=max_length, model_kwargs=model_kwargs)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    setattr(transformer, "processor" if hasattr(transformer, "processor") else "tokenizer",
            tokenizer)
    transformer.max_seq_length = max_length  # kept as the tokenizer's model_max_length
    dim = (transformer.get_embedding_dimension()
           if hasattr(transformer, "get_embedding_dimension")
           else transformer.get_word_embedding_dimension())
    return SentenceTransformer(modules=[transformer, Pooling(dim, "mean"), Normalize()],
                               device=device)


# Child-process code that makes st_model() available (benchmarks run sentence-transformers in
# child processes, timed whole).
ST_MODEL_CODE = f"""
import sys
sys.path.insert(0, {os.path.join(ROOT, "benchmarks")!r})
from common import st_model
"""


def cosines(a, b):
    """Row-wise cosine of two (rows, dim) arrays, in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def candidate_texts(rows: list[dict], where: str) -> list[str]:
    """hbt-encode's default texts (with the "passage: " prefix) of ``hbt-prepare lareqa``
    candidate rows, by its own text recipe: answer sentence + paragraph."""
    sys.path.insert(0, ROOT)
    from hbt_tools.encoding import TextRecipe

    recipe = TextRecipe.from_options("passage")
    return ["passage: " + recipe.build(row, where, number) for number, row in enumerate(rows, 1)]


def add_model_bench_arguments(parser, name: str) -> None:
    """--repeats, --xquad-r, --workdir, --json: shared by the scripts that run the real model."""
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--xquad-r", default=XQUAD_R, help="folder of XQuAD-R {lang}.json")
    parser.add_argument("--workdir", help="keep prepared inputs here (reused)")
    parser.add_argument("--json", help=f"results file (default benchmarks/results/{name}.json)")


def machine() -> dict:
    """CPU model, core count, memory and load, from lscpu / nproc / free (Linux)."""
    info = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1min": round(os.getloadavg()[0], 2)}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", info["cpu"]).strip()
        flags = fields.get("Flags", "").split()
        info["bf16_instructions"] = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
        info["cpus"] = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
        free = subprocess.run(["free", "-b"], capture_output=True, text=True).stdout.split("\n")
        info["memory_gb"] = round(int(free[1].split()[1]) / 1e9, 1)
    except (OSError, ValueError, IndexError):   # not Linux: keep what platform gave
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


def timed_process(command: list[str], env: dict | None = None) -> float:
    """Wall seconds of a child process (stdout and stderr discarded); exits on failure."""
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))
    if result.returncode:
        sys.exit(f"{' '.join(command[:4])} ... failed (exit {result.returncode}):\n"
                 f"{result.stderr.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - start


def ratio(numerators: list[float], denominators: list[float]) -> dict:
    """Ratio of medians, and min-max of the per-repeat ratios (repeats were interleaved, so
    repeat i of both sides saw the same machine load)."""
    per_repeat = [a / b for a, b in zip(numerators, denominators)]
    return {"median": statistics.median(numerators) / statistics.median(denominators),
            "min": min(per_repeat), "max": max(per_repeat), "values": per_repeat}


def target(what: str, peer: str, goal: float, value: dict | float, text: str,
           higher_is_better: bool, unit: str = "") -> dict:
    """One issue-5 target: ``value`` (a ratio dict or a number) against ``goal``."""
    median = value["median"] if isinstance(value, dict) else value
    spread = (f" ({value['min']:.3g}–{value['max']:.3g})" if isinstance(value, dict) else "")
    return {"what": what, "peer": peer, "target": text, "goal": goal,
            "higher_is_better": higher_is_better, "value": median,
            "measured": f"{median:.3g}{unit}{spread}",
            "pass": bool(median >= goal if higher_is_better else median <= goal)}


def write_results(name: str, payload: dict, path: str | None = None) -> str:
    """Write ``payload`` (plus benchmark name, date, machine) as JSON; return the path."""
    path = path or os.path.join(RESULTS, f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M"),
               "machine": machine(), **payload}
    with open(path + ".part", "w") as fh:
        json.dump(payload, fh, indent=1)
    os.replace(path + ".part", path)
    print(f"results: {path}", file=sys.stderr)
    return path


def print_targets(targets: list[dict]) -> None:
    print("\n| target | peer | goal | measured | |\n|---|---|---|---|---|")
    for t in targets:
        print(f"| {t['what']} | {t['peer']} | {t['target']} | {t['measured']} | "
              f"{'PASS' if t['pass'] else 'MISS'} |")
