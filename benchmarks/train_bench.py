#!/usr/bin/env python3
"""hbt-train against sentence-transformers' trainer, and gradient caching against a plain batch.

Targets (issue 5), the real multilingual-e5-small on XQuAD-R parallel pairs (query, answer
sentence; ``hbt-prepare pairs`` + ``hbt-make-batches --strategy hybrid``):

* hbt-train steps/s at batch 32 (its defaults: bf16 autocast on this CPU) >= 2x
  sentence-transformers' ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss``
  (scale 20 = temperature 0.05, AdamW lr 3e-5, weight decay 0.01, no warm-up, default fp32)
  on the same batches in the same order (a sequential batch sampler), same prefixes; and the
  loss curves agree within noise (both have dropout on, each repeat its own seed: the
  spread of the repeats is the noise);
* ``hbt-train --chunk-size 32`` at batch 512: peak RSS <= 35% of plain batch 512 and time per
  step <= 2.5x plain.

Steps/s is the median over the steps after the first (warm-up) of each run's per-step wall
time (hbt-train's train_log.jsonl; a trainer callback for sentence-transformers); runs are
child processes, repeats interleaved. Peak RSS: ``ru_maxrss`` of the child (``os.wait4``).

Usage:  python benchmarks/train_bench.py [--steps 6] [--big-steps 3] [--repeats 3]
            [--workdir DIR] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import (ROOT, ST_MODEL_CODE, add_model_bench_arguments, model_bench_dirs,
                    print_targets, ratio, summary, target, write_results)

sys.path.insert(0, ROOT)

ST_PROCESS = ST_MODEL_CODE + """
import json, sys, time, torch
from datasets import Dataset
from torch.utils.data import BatchSampler, SequentialSampler
from transformers import TrainerCallback
from sentence_transformers import SentenceTransformerTrainer
from sentence_transformers import SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
folder, batches_path, steps, out, log_path, seed = sys.argv[1:7]
steps = int(steps)
queries, positives = [], []
for line in open(batches_path, encoding="utf-8").readlines()[:steps]:
    for item in json.loads(line)["items"]:
        queries.append("query: " + item["query"])
        positives.append("passage: " + item["positive"])
batch_size = len(queries) // steps
model = st_model(folder, 256)

class InOrder(SentenceTransformerTrainer):
    def get_batch_sampler(self, dataset, batch_size, drop_last, *args, **kwargs):
        return BatchSampler(SequentialSampler(dataset), batch_size, drop_last)

class StepLog(TrainerCallback):
    def __init__(self):
        self.rows, self.started = [], None
    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
    def on_step_end(self, args, state, control, **kwargs):
        self.rows.append({"step": state.global_step,
                          "seconds": time.perf_counter() - self.started})
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.rows[-1]["loss"] = logs["loss"]

log = StepLog()
args = SentenceTransformerTrainingArguments(
    output_dir=out, per_device_train_batch_size=batch_size, num_train_epochs=1,
    learning_rate=3e-5, weight_decay=0.01, warmup_steps=0, lr_scheduler_type="linear",
    logging_steps=1, save_strategy="no", report_to=[], seed=int(seed), dataloader_drop_last=False,
    disable_tqdm=True)
trainer = InOrder(model=model, args=args, callbacks=[log],
                  train_dataset=Dataset.from_dict({"anchor": queries, "positive": positives}),
                  loss=MultipleNegativesRankingLoss(model, scale=20.0))
trainer.train()
json.dump(log.rows, open(log_path, "w"))
"""


def prepare_batches(xquad_r: str, workdir: str, batch_size: int, steps: int,
                    positive: str) -> str:
    pairs = os.path.join(workdir, f"pairs-{positive}.jsonl")
    if not os.path.exists(pairs):
        subprocess.run([sys.executable, os.path.join(ROOT, "bin", "hbt-prepare"), "pairs",
                        xquad_r, "--positive", positive, "-o", pairs], check=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    batches = os.path.join(workdir, f"batches-{positive}-{batch_size}x{steps}.jsonl")
    subprocess.run([sys.executable, os.path.join(ROOT, "bin", "hbt-make-batches"), pairs,
                    "--strategy", "hybrid", "--alpha", "0.5", "--batch-size", str(batch_size),
                    "--steps", str(steps), "--seed", "0", "-o", batches], check=True,
                   env=dict(os.environ, PYTHONPATH=ROOT))
    return batches


def run_child(command: list[str]) -> dict:
    """Wall seconds and peak RSS (``ru_maxrss``) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(command[:4])} ... failed:\n{stderr.decode(errors='replace')[-3000:]}")
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024}


def hbt_train(batches: str, output: str, steps: int, seed: int, extra: list[str] = ()) -> dict:
    result = run_child([sys.executable, os.path.join(ROOT, "bin", "hbt-train"), "--model",
                        "multilingual-e5-small", "--output", output, "--max-steps", str(steps),
                        "--seed", str(seed),
                        "--save-steps", "0", "--quiet", *extra, batches])
    with open(os.path.join(output, "train_log.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    return {**result, "losses": [r["loss"] for r in rows],
            "step_seconds": [r["seconds"] for r in rows]}


def st_train(folder: str, batches: str, output: str, steps: int, seed: int) -> dict:
    log_path = os.path.join(output + ".log.json")
    result = run_child([sys.executable, "-c", ST_PROCESS, folder, batches, str(steps), output,
                        log_path, str(seed)])
    with open(log_path) as fh:
        rows = json.load(fh)
    return {**result, "losses": [r.get("loss") for r in rows],
            "step_seconds": [r["seconds"] for r in rows]}


def steady_step_seconds(run: dict) -> float:
    """Median seconds per step, the first (warm-up) step left out."""
    return statistics.median(run["step_seconds"][1:] or run["step_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="steps of the batch-32 runs")
    parser.add_argument("--big-steps", type=int, default=3, help="steps of the batch-512 runs")
    parser.add_argument("--big-batch", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--big-max-length", type=int, default=32,
                        help="query and passage length cap of both batch-512 runs: a plain "
                             "batch of 512 at 64 tokens needs ~21 GB of activations")
    add_model_bench_arguments(parser, "train")
    args = parser.parse_args()

    with model_bench_dirs(args) as (folder, tmp, workdir):
        small = prepare_batches(args.xquad_r, workdir, 32, args.steps, "sentence")
        big = prepare_batches(args.xquad_r, workdir, args.big_batch, args.big_steps, "sentence")
        runs: dict[str, list[dict]] = {"hbt": [], "st": [], "plain": [], "chunked": []}
        for repeat in range(args.repeats):
            out = os.path.join(tmp, f"r{repeat}")
            # a different seed per repeat (dropout masks): the repeats' spread is the noise
            runs["hbt"].append(hbt_train(small, out + "-hbt", args.steps, repeat))
            runs["st"].append(st_train(folder, small, out + "-st", args.steps, repeat))
            cut = ["--max-query-length", str(args.big_max_length),
                   "--max-passage-length", str(args.big_max_length)]
            runs["plain"].append(hbt_train(big, out + "-plain", args.big_steps, repeat, cut))
            runs["chunked"].append(hbt_train(big, out + "-chunked", args.big_steps, repeat,
                                             [*cut, "--chunk-size", str(args.chunk_size)]))
            print(f"repeat {repeat + 1}: " + ", ".join(
                f"{name} {r[-1]['wall_s']:.0f} s" for name, r in runs.items()), file=sys.stderr)

    step_s = {name: [steady_step_seconds(r) for r in rs] for name, rs in runs.items()}
    rss = {name: [r["peak_rss_bytes"] for r in rs] for name, rs in runs.items()}
    steps_per_s = {name: [1 / s for s in values] for name, values in step_s.items()}
    loss_curves = {name: [statistics.mean(r["losses"][i] for r in runs[name])
                          for i in range(args.steps)] for name in ("hbt", "st")}
    loss_gap = max(abs(a - b) for a, b in zip(loss_curves["hbt"], loss_curves["st"]))
    # "within noise": the largest step-wise gap against the spread of the repeats of one tool
    # (dropout makes every run differ)
    noise = max(max(r["losses"][i] for r in runs[name]) - min(r["losses"][i] for r in runs[name])
                for name in ("hbt", "st") for i in range(args.steps))
    rows = [{"what": what, **summary(step_s[name]), "unit": "s/step",
             "peak_rss_mb": statistics.median(rss[name]) / 2**20,
             "wall_s": statistics.median(r["wall_s"] for r in runs[name])}
            for name, what in (("hbt", "hbt-train, batch 32 (bf16 autocast)"),
                               ("st", "sentence-transformers MNRL trainer, batch 32 (fp32)"),
                               ("plain", f"hbt-train, batch {args.big_batch}"),
                               ("chunked", f"hbt-train --chunk-size {args.chunk_size}, batch "
                                           f"{args.big_batch}"))]
    targets = [
        target("hbt-train steps/s, batch 32", "sentence-transformers MNRL + trainer (fp32)", 2,
               ratio(step_s["st"], step_s["hbt"]), "≥ 2×", True, "×"),
        target("loss curve, largest step-wise gap of the mean curves",
               "sentence-transformers (same batches)", noise, loss_gap,
               f"≤ spread of repeats ({noise:.3g})", False),
        target(f"--chunk-size {args.chunk_size} peak RSS, share of plain batch {args.big_batch}",
               f"plain batch {args.big_batch}", 35,
               {k: 100 * v for k, v in ratio(rss["chunked"], rss["plain"]).items()
                if k != "values"}, "≤ 35%", False, "%"),
        target(f"--chunk-size {args.chunk_size} time per step, vs plain batch {args.big_batch}",
               f"plain batch {args.big_batch}", 2.5, ratio(step_s["chunked"], step_s["plain"]),
               "≤ 2.5×", False, "×"),
    ]
    setup = (f"multilingual-e5-small, XQuAD-R pairs (query, answer sentence), hybrid batches "
             f"(alpha 0.5); batch 32: {args.steps} steps, batch {args.big_batch}: "
             f"{args.big_steps} steps, queries and passages cut at {args.big_max_length} tokens; seconds per "
             f"step = median over steps 2..n")
    print(f"## hbt-train\n\n{setup}\n\n| run | s/step, median (min–max) | peak RSS MB | "
          f"whole process s |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['what']} | {row['median']:.2f} ({row['min']:.2f}–{row['max']:.2f}) | "
              f"{row['peak_rss_mb']:.0f} | {row['wall_s']:.0f} |")
    print("\nmean loss per step: hbt " + " ".join(f"{x:.3f}" for x in loss_curves["hbt"]) +
          "; sentence-transformers " + " ".join(f"{x:.3f}" for x in loss_curves["st"]))
    print_targets(targets)
    write_results("train", {"title": "hbt-train vs sentence-transformers; gradient caching",
                            "setup": setup, "repeats": args.repeats, "rows": rows,
                            "targets": targets, "loss_curves": loss_curves,
                            "steps_per_s": steps_per_s, "runs": runs}, args.json)


if __name__ == "__main__":
    main()
