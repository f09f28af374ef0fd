#!/usr/bin/env python3
"""hbt-make-batches on 1M pairs: throughput and peak memory of the whole process.

Target (issue 5): >= 200k pairs/s and < 2 GB peak resident memory on 1M pairs.

The script writes a synthetic pairs.jsonl (seeded: --pairs lines, --langs languages per group,
query ~60 characters, positive ~250, a hard negative on half the lines; ~0.55 KB a line), then
runs ``bin/hbt-make-batches`` as a child process and measures its wall time, CPU time, and peak
RSS: of the largest process (``os.wait4``'s ``ru_maxrss``: the command or one of its index
workers) and of the whole process tree (``/proc``, sampled every 10 ms). Two runs:

* ``--epochs 1`` (hybrid, alpha 0.5, batch 100): every input pair is indexed and each group is
  used once -> *input pairs per second* (the issue's measure);
* ``--steps pairs/100``: as many items written as there are input pairs -> *items per second*
  (reading and writing dominate).

Usage:  python benchmarks/make_batches_1m.py [--pairs 1000000] [--langs 8] [--repeats 3]
            [--workdir DIR] [--json PATH]
Prints a markdown table: median and min-max of the repeats.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

import orjson

from common import ROOT, print_targets, summary, target, write_results

LANGUAGES = ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]
BATCH_SIZE = 100


def write_pairs(path: str, n_pairs: int, langs_per_group: int, seed: int = 0) -> None:
    """``n_pairs`` lines; groups of ``langs_per_group`` translations, languages grouped in the
    file (one block of lines per language, as ``hbt-prepare pairs`` writes them)."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(5000)]

    def text(n_chars):
        return " ".join(rng.choices(words, k=n_chars // 6))

    texts = [text(250) for _ in range(4000)]
    queries = [text(60) for _ in range(4000)]
    n_groups = -(-n_pairs // langs_per_group)
    langs = LANGUAGES[:langs_per_group]
    written = 0
    with open(path + ".part", "wb") as fh:
        for lang in langs:
            rows = []
            for group in range(n_groups):
                if written == n_pairs:
                    break
                row = {"group": f"q{group:08d}", "lang": lang, "query": queries[(group * 7 + len(rows)) % 4000],
                       "positive": texts[(group * 13) % 4000], "source": "synthetic"}
                if group % 2:
                    row["negatives"] = [texts[(group * 17 + 1) % 4000]]
                rows.append(orjson.dumps(row))
                written += 1
            fh.write(b"\n".join(rows) + b"\n")
    os.replace(path + ".part", path)


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (its index workers), from /proc."""
    total = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            total += next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            total += sum(tree_rss(int(child)) for child in fh.read().split())
    except (OSError, StopIteration):  # the process ended while we looked
        pass
    return total


def run_command(args: list[str]) -> dict:
    """Run bin/hbt-make-batches ARGS: wall and CPU seconds, peak RSS (largest process, exact;
    whole process tree, sampled every 10 ms)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "hbt-make-batches"), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    tree_peak = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        tree_peak = max(tree_peak, tree_rss(proc.pid))
        time.sleep(0.01)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"hbt-make-batches {' '.join(args)} failed with exit {proc.returncode}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_bytes": usage.ru_maxrss * 1024, "tree_peak_rss_bytes": tree_peak}


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min-max)``."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--langs", type=int, default=8, help="languages per group")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", help="keep pairs.jsonl here (reused when it exists)")
    parser.add_argument("--json",
                        help="results file (default benchmarks/results/make_batches.json)")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = options.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        pairs = os.path.join(workdir, f"pairs-{options.pairs}-{options.langs}.jsonl")
        if not os.path.exists(pairs):
            started = time.perf_counter()
            write_pairs(pairs, options.pairs, options.langs)
            print(f"wrote {pairs} ({os.path.getsize(pairs) / 1e6:.0f} MB) in "
                  f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        output = os.path.join(tmp, "batches.jsonl")
        common = [pairs, "--strategy", "hybrid", "--alpha", "0.5", "--batch-size", str(BATCH_SIZE),
                  "--seed", "0", "-o", output]
        n_groups = -(-options.pairs // options.langs)
        runs = {
            "--epochs 1": (["--epochs", "1"], options.pairs, "input pairs/s"),
            f"--steps {options.pairs // BATCH_SIZE}": (["--steps", str(options.pairs // BATCH_SIZE)],
                                                        options.pairs // BATCH_SIZE * BATCH_SIZE,
                                                        "items written/s"),
        }
        results = {}
        for name, (extra, count, unit) in runs.items():
            repeats = [run_command(common + extra) for _ in range(options.repeats)]
            results[name] = {"unit": unit, "count": count,
                             **{key: [r[key] for r in repeats] for key in repeats[0]}}

    print(f"hbt-make-batches, {options.pairs:,} pairs ({n_groups:,} groups x {options.langs} "
          f"languages), hybrid alpha 0.5, batch {BATCH_SIZE}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}; "
          f"median of {options.repeats} (min-max)\n")
    print("| run | wall s | rate | CPU s (all processes) | peak RSS MB, largest process | "
          "peak RSS MB, process tree | target |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        rates = [r["count"] / wall for wall in r["wall_s"]]
        goal = "≥ 200k pairs/s, < 2 GB" if name == "--epochs 1" else "—"
        print(f"| {name} | {spread(r['wall_s'])} | {spread(rates, '{:,.0f}')} {r['unit']} | "
              f"{spread(r['cpu_s'])} | {spread([b / 2**20 for b in r['peak_rss_bytes']], '{:.0f}')} | "
              f"{spread([b / 2**20 for b in r['tree_peak_rss_bytes']], '{:.0f}')} | {goal} |")
    epoch = results["--epochs 1"]
    setup = (f"{options.pairs:,} synthetic pairs ({n_groups:,} groups x {options.langs} "
             f"languages, ~0.55 KB a line), hybrid alpha 0.5, batch {BATCH_SIZE}; whole "
             f"process (bin/hbt-make-batches and its index workers)")
    rows = [{"what": f"hbt-make-batches {name}", **summary(r["wall_s"]), "unit": "s",
             "rate": statistics.median(r["count"] / w for w in r["wall_s"]),
             "peak_rss_mb_process_tree": statistics.median(r["tree_peak_rss_bytes"]) / 2**20}
            for name, r in results.items()]
    targets = [
        target("hbt-make-batches --epochs 1, input pairs/s", "—", 200_000,
               summary([epoch["count"] / w for w in epoch["wall_s"]]), "≥ 200k pairs/s", True),
        target("hbt-make-batches --epochs 1, peak RSS (process tree)", "—", 2048,
               summary([b / 2**20 for b in epoch["tree_peak_rss_bytes"]]), "< 2 GB", False,
               " MB"),
    ]
    print_targets(targets)
    write_results("make_batches", {"title": "hbt-make-batches, 1M pairs", "setup": setup,
                                   "repeats": options.repeats, "rows": rows, "targets": targets,
                                   "runs": results}, options.json)


if __name__ == "__main__":
    main()
