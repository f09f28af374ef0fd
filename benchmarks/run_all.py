#!/usr/bin/env python3
"""Run every benchmark (results into benchmarks/results/*.json), then regenerate
docs/benchmarks.md. Each script runs as its own process, one after the other.

Usage:  python benchmarks/run_all.py [--repeats 3] [--only encode,train,...] [--quick]
``--quick`` uses small sizes (a smoke test of the scripts, not numbers to publish).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from common import RESULTS, ROOT

HERE = os.path.join(ROOT, "benchmarks")
# name -> (script, arguments, arguments with --quick)
BENCHMARKS = {
    "encode": ("encode_bench.py", ["--passages", "300"],
               ["--passages", "20", "--quality-articles", "0:1", "--quality-langs", "en,de"]),
    "train": ("train_bench.py", ["--steps", "6", "--big-steps", "3"],
              ["--steps", "2", "--big-steps", "2", "--big-batch", "64", "--chunk-size", "16"]),
    "score": ("score_bench.py", [], ["--queries", "1000"]),
    "search": ("search_bench.py", [], ["--queries", "1000", "--passages", "10000"]),
    "make_batches": ("make_batches_1m.py", [], ["--pairs", "100000"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help="comma-separated subset of " + ", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    failed = []
    for name in args.only.split(","):
        script, full, quick = BENCHMARKS[name]
        command = [sys.executable, os.path.join(HERE, script), *(quick if args.quick else full),
                   "--repeats", str(args.repeats), "--json", os.path.join(RESULTS, f"{name}.json")]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, cwd=HERE).returncode:
            failed.append(name)
    subprocess.run([sys.executable, os.path.join(HERE, "make_docs.py")], check=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
