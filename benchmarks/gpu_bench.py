#!/usr/bin/env python3
"""hbt-encode and hbt-train on a CUDA GPU: throughput, memory, agreement with sentence-transformers.

Not one of issue 5's targets (those are set on the 2-core CPU): this measures the per-item GPU
costs that ``scale_on_paper.md`` builds on, with sentence-transformers' ``encode`` on the same
GPU, same texts, in the same run as the peer. Two model shapes: multilingual-e5-small's (384 x
12 layers) and XLM-R base's (768 x 12, same tokenizer), both with random weights unless
``--model`` holds weights: speed does not depend on the weights, and the embeddings are compared
between the two encoders on the same weights.

* encode: all XQuAD-R candidates (answer sentence + paragraph, "passage: ", 256 tokens), model
  loaded, in process; hbt-tools (``encode_file``, default bf16 on an Ampere+ GPU, at
  ``--batch-tokens`` 16384 and 65536) vs ``SentenceTransformer.encode`` (fp32, its default, and
  the model loaded in bf16 at batch 128); tokens/s and mean cosine to the
  fp32 embeddings;
* train: ``hbt_tools.training.train`` on hybrid batches of XQuAD-R pairs, seconds per step
  (median after the first 3) and peak GPU memory, at batch 32 and the paper's 100, and at 512
  with and without ``--chunk-size 32``;
* the GPU's bf16 matmul rate (8192^3 and the models' FFN shapes).

Usage:  python benchmarks/gpu_bench.py --model FOLDER [--xquad-r DIR] [--repeats 3]
            [--train-steps 13] [--train-batches 32,100,512] [--shapes e5-small,xlmr-base]
            [--device cuda] [--articles 0:2] [--json PATH]
FOLDER: a BERT / XLM-R folder with config.json, tokenizer.json, tokenizer_config.json and
hbt_retrieval.json (model.safetensors optional; default: the built-in multilingual-e5-small).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import ROOT, XQUAD_R, candidate_texts, cosines, st_model, summary, write_results

sys.path.insert(0, ROOT)
XLMR_BASE = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
             "num_hidden_layers": 12}
FOLDER_FILES = ("tokenizer.json", "tokenizer_config.json", "hbt_retrieval.json")


def command(name: str, *args: str) -> None:
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    subprocess.run([sys.executable, os.path.join(ROOT, "bin", name), *map(str, args)],
                   check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=path))


def model_folder(source: str, target: str, overrides: dict) -> str:
    """``source``'s tokenizer and settings with its config (+ ``overrides``) and, where
    ``source`` has none or the shape changed, seeded random weights."""
    import torch
    from transformers import AutoConfig, AutoModel

    os.makedirs(target, exist_ok=True)
    for name in FOLDER_FILES:
        shutil.copy(os.path.join(source, name), target)
    if not overrides and os.path.exists(os.path.join(source, "model.safetensors")):
        shutil.copy(os.path.join(source, "config.json"), target)
        shutil.copy(os.path.join(source, "model.safetensors"), target)
        return target
    config = AutoConfig.from_pretrained(source, **overrides)
    torch.manual_seed(0)
    AutoModel.from_config(config, add_pooling_layer=False).save_pretrained(target)
    return target


def matmul_rates(device: str, shapes: dict) -> dict:
    """bf16 TFLOP/s of each (m, k, n), best of 20 after warm-up."""
    import torch

    rates = {}
    for name, (m, k, n) in shapes.items():
        a = torch.randn(m, k, dtype=torch.bfloat16, device=device)
        b = torch.randn(k, n, dtype=torch.bfloat16, device=device)
        for _ in range(3):
            a @ b
        best = float("inf")
        for _ in range(20):
            sync(device)
            start = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - start)
        rates[name] = 2 * m * k * n / best / 1e12
    return rates


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_encode(folder: str, corpus: str, device: str, repeats: int, work: str) -> dict:
    """hbt-tools vs sentence-transformers on ``corpus``, in process, model loaded once each."""
    import torch

    from hbt_tools.encoding import encode_file
    from hbt_tools.io import load_embeddings

    with open(corpus, encoding="utf-8") as fh:
        texts = candidate_texts([json.loads(line) for line in fh], corpus)
    times: dict[str, list[float]] = {}
    tokens = 0
    embeddings = {}
    for batch_tokens in (16384, 65536):
        name = f"hbt-tools bf16, batch-tokens {batch_tokens}"
        out = os.path.join(work, f"hbt-{batch_tokens}.npy")
        for _ in range(repeats + 1):  # the first is a warm-up (CUDA kernels, allocator)
            result = encode_file(folder, corpus, out, "passage", device=device,
                                 batch_tokens=batch_tokens, progress=False)
            times.setdefault(name, []).append(result.seconds)
        times[name] = times[name][1:]
        tokens = result.tokens
        embeddings[name] = load_embeddings(out)[0]

    # its defaults (fp32, batch 32), and the model in bf16 at a GPU-sized batch
    for label, dtype, batch_size in (("fp32", None, 32), ("bf16", torch.bfloat16, 128)):
        model = st_model(folder, 256, {"dtype": dtype} if dtype else None, device)
        name = f"sentence-transformers {label}, batch {batch_size}"
        for _ in range(repeats + 1):
            sync(device)
            start = time.perf_counter()
            emb = model.encode(texts, batch_size=batch_size)
            sync(device)
            times.setdefault(name, []).append(time.perf_counter() - start)
        times[name] = times[name][1:]
        embeddings[name] = np.asarray(emb, dtype=np.float32)
        del model
    # Centred on the reference's mean: a random-weight model maps every text near one
    # direction, so that raw cosines are ~1 whatever the encoder computes.
    reference = embeddings["sentence-transformers fp32, batch 32"].astype(np.float64)
    centre = reference.mean(0)
    cosine = {name: float(cosines(e.astype(np.float64) - centre, reference - centre).mean())
              for name, e in embeddings.items()}
    return {"texts": len(texts), "tokens": tokens, "times": times, "cosine_to_st_fp32": cosine}


def bench_train(folder: str, pairs: str, device: str, steps: int, sizes: list[int],
                work: str) -> list[dict]:
    """Seconds per step and peak GPU memory of hbt-tools' trainer (bf16 autocast), at each
    batch size and at the largest with ``--chunk-size 32`` too."""
    import torch

    from hbt_tools.training import TrainConfig, train

    rows = []
    for batch, chunk in [(size, None) for size in sizes] + [(sizes[-1], 32)]:
        batches = os.path.join(work, f"batches-{batch}.jsonl")
        if not os.path.exists(batches):
            command("hbt-make-batches", pairs, "--strategy", "hybrid", "--alpha", "0.5",
                    "--batch-size", batch, "--steps", steps, "--seed", "0", "-o", batches)
        out = os.path.join(work, f"train-{batch}-{chunk}")
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        train(TrainConfig(model=folder, output=out, batches=batches, chunk_size=chunk,
                          save_steps=None, progress=False, temperature=0.01))
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        with open(os.path.join(out, "train_log.jsonl"), encoding="utf-8") as fh:
            log = [json.loads(line) for line in fh]
        seconds = [r["seconds"] for r in log[3:]]
        rows.append({"batch": batch, "chunk_size": chunk, "seconds": summary(seconds),
                     "losses": [r["loss"] for r in log], "peak_gpu_gib": peak,
                     "items": log[-1]["items"]})
        shutil.rmtree(out)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the built-in mE5-small)")
    parser.add_argument("--xquad-r", default=XQUAD_R)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=13)
    parser.add_argument("--train-batches", default="32,100,512",
                        help="batch sizes (the last also with --chunk-size 32)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", default="e5-small,xlmr-base")
    parser.add_argument("--articles", help="XQuAD-R articles, e.g. 0:2 (a smoke run; default all)")
    parser.add_argument("--json", help="results file (default benchmarks/results/gpu.json)")
    args = parser.parse_args()
    import torch

    if args.model is None:
        from hbt_tools.models.offline import builtin_model_dir
        args.model = builtin_model_dir()
    gpu = (torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "none (CPU run)")
    print(f"device: {gpu}; torch {torch.__version__}", file=sys.stderr)
    shapes = {"e5-small": {}, "xlmr-base": XLMR_BASE}
    results: dict = {"gpu": gpu, "torch": torch.__version__, "shapes": {}}
    square = 8192 if args.device.startswith("cuda") else 2048  # a CPU smoke run: smaller
    results["matmul_tflops"] = matmul_rates(args.device, {
        f"{square}^3": (square, square, square),
        "FFN e5-small 16384x384x1536": (16384, 384, 1536),
        "FFN xlmr-base 16384x768x3072": (16384, 768, 3072)})
    print(f"bf16 matmul TFLOP/s: {results['matmul_tflops']}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as work:
        subset = ["--articles", args.articles] if args.articles else []
        command("hbt-prepare", "lareqa", args.xquad_r, *subset, "-o",
                os.path.join(work, "xquad-r"))
        pairs = os.path.join(work, "pairs.jsonl")
        command("hbt-prepare", "pairs", args.xquad_r, "--positive", "sentence+context",
                "-o", pairs)
        corpus = os.path.join(work, "xquad-r", "corpus.jsonl")
        for shape in args.shapes.split(","):
            folder = model_folder(args.model, os.path.join(work, shape), shapes[shape])
            shape_work = os.path.join(work, f"{shape}-out")
            os.makedirs(shape_work)
            encode = bench_encode(folder, corpus, args.device, args.repeats, shape_work)
            print(f"{shape} encode: " + json.dumps({k: round(statistics.median(v), 3)
                                                    for k, v in encode["times"].items()}),
                  file=sys.stderr)
            train_rows = bench_train(folder, pairs, args.device, args.train_steps,
                                     [int(b) for b in args.train_batches.split(",")], shape_work)
            for row in train_rows:
                print(f"{shape} train batch {row['batch']} chunk {row['chunk_size']}: "
                      f"{row['seconds']['median']:.4f} s/step, peak {row['peak_gpu_gib']} GiB",
                      file=sys.stderr)
            results["shapes"][shape] = {"encode": encode, "train": train_rows}
            shutil.rmtree(shape_work)
    write_results("gpu", render(results, args.repeats), args.json)


def render(results: dict, repeats: int) -> dict:
    """The common results shape (rows for docs/benchmarks.md) plus the raw numbers."""
    rows = []
    for shape, data in results["shapes"].items():
        encode = data["encode"]
        for name, values in encode["times"].items():
            rows.append({"what": f"{shape}: encode {encode['texts']} XQuAD-R candidates, {name}",
                         **summary(values), "unit": "s",
                         "tokens_per_s": encode["tokens"] / statistics.median(values),
                         "mean_cosine_to_st_fp32": encode["cosine_to_st_fp32"][name]})
        for row in data["train"]:
            chunk = f", --chunk-size {row['chunk_size']}" if row["chunk_size"] else ""
            extra = {"peak_gpu_GiB": row["peak_gpu_gib"]} if row["peak_gpu_gib"] else {}
            rows.append({"what": f"{shape}: hbt-train batch {row['batch']}{chunk}",
                         **row["seconds"], "unit": "s/step",
                         "pairs_per_s": row["items"] / row["seconds"]["median"], **extra})
    rates = ", ".join(f"{k} {v:.0f}" for k, v in results["matmul_tflops"].items())
    setup = (f"{results['gpu']}, torch {results['torch']}; bf16 matmul TFLOP/s: {rates}. "
             "Model weights random (speed only; the cosine compares encoders on the same "
             "weights). Encode times exclude model loading (in process, after a warm-up run); "
             "train: median s/step after 3 warm-up steps, peak = torch.cuda.max_memory_allocated")
    return {"title": "On a GPU: hbt-encode and hbt-train, with sentence-transformers' encode",
            "setup": setup, "repeats": repeats, "rows": rows, "targets": [], **results}


if __name__ == "__main__":
    main()
