#!/usr/bin/env python3
"""hbt-search (flat) against raw faiss ``IndexFlatIP.search``, same arrays, same run.

Target (issue 5): hbt-search flat, 10k queries x 100k passages (dim 384) takes <= 1.1x the time
of faiss' own search. Random normalised float32 vectors (seeded) stand in for embeddings: a flat
search costs the same whatever the values.

Two comparisons, repeats interleaved so that both sides see the same machine load:

* in process: faiss ``index.search(queries, k)`` alone, versus hbt-tools' search loop that
  ``hbt-search`` runs after loading (search, trec_eval tie order, formatting and writing the
  TREC run to a file);
* whole process: ``hbt-search --index INDEX queries.npy -o run`` as a subprocess, versus a
  Python subprocess that loads the same ``.npy`` files, builds an ``IndexFlatIP`` and searches.

Usage:  python benchmarks/search_bench.py [--queries 10000 --passages 100000 --dim 384 -k 100]
            [--repeats 3] [--workdir DIR] [--json PATH]
Prints a markdown table (median and min-max of the repeats) and the ratios.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from hbt_tools.thread_pools import sleep_when_idle  # noqa: E402

sleep_when_idle()  # as hbt-search does, before numpy and faiss load (faiss here gets it too)

import numpy as np  # noqa: E402

from common import ROOT, print_targets, ratio, summary, target, write_results  # noqa: E402

sys.path.insert(0, ROOT)

from hbt_tools.indexing import index_embeddings, load_index  # noqa: E402
from hbt_tools.io import save_embeddings  # noqa: E402
from hbt_tools.memory import keep_freed_memory  # noqa: E402
from hbt_tools.search import Searcher, write_search_run  # noqa: E402

RAW_FAISS_PROCESS = """
import sys, numpy as np, faiss
passages = np.load(sys.argv[1]).astype(np.float32)
queries = np.load(sys.argv[2]).astype(np.float32)
index = faiss.IndexFlatIP(passages.shape[1])
index.add(passages)
index.search(queries, int(sys.argv[3]))
"""


def normalised(rng, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_inputs(workdir: str, n_queries: int, n_passages: int, dim: int) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    passages_npy = os.path.join(workdir, "passages.npy")
    queries_npy = os.path.join(workdir, "queries.npy")
    save_embeddings(passages_npy, normalised(rng, n_passages, dim),
                    ({"id": f"doc{i}", "lang": "en"} for i in range(n_passages)))
    save_embeddings(queries_npy, normalised(rng, n_queries, dim),
                    ({"id": f"q{i}", "lang": "en"} for i in range(n_queries)))
    return passages_npy, queries_npy


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spread_text(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} s ({min(times):.2f}–{max(times):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("-k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="Where inputs and runs go (default: temp).")
    parser.add_argument("--json", default=None,
                        help="Results file (default benchmarks/results/search.json).")
    args = parser.parse_args()

    import faiss

    keep_freed_memory()  # as hbt-search does (faiss in this process gets it too)
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        passages_npy, queries_npy = make_inputs(workdir, args.queries, args.passages, args.dim)
        index_dir = os.path.join(workdir, "passages.index")
        index_embeddings(passages_npy, index_dir, progress=False)
        run_path = os.path.join(workdir, "run.trec")

        passages = np.load(passages_npy)
        queries = np.load(queries_npy)
        raw_index = faiss.IndexFlatIP(args.dim)
        raw_index.add(passages)
        searcher = Searcher([load_index(index_dir)])
        qids = [f"q{i}" for i in range(args.queries)]

        def hbt_in_process():
            with open(run_path, "wb") as out:
                write_search_run(searcher, queries, qids, out, k=args.k, progress=False)

        env = dict(os.environ, PYTHONPATH=ROOT)
        hbt_command = [sys.executable, os.path.join(ROOT, "bin", "hbt-search"), "--index",
                       index_dir, queries_npy, "-k", str(args.k), "-o", run_path]
        raw_command = [sys.executable, "-c", RAW_FAISS_PROCESS, passages_npy, queries_npy,
                       str(args.k)]
        times: dict[str, list[float]] = {name: [] for name in
                                         ("faiss", "hbt", "faiss_process", "hbt_process")}
        faiss_hits = {}

        def faiss_in_process():
            faiss_hits["scores"], faiss_hits["labels"] = raw_index.search(queries, args.k)

        for _ in range(args.repeats):
            times["faiss"].append(timed(faiss_in_process))
            times["hbt"].append(timed(hbt_in_process))
            times["faiss_process"].append(timed(
                lambda: subprocess.run(raw_command, check=True, env=env)))
            times["hbt_process"].append(timed(
                lambda: subprocess.run(hbt_command, check=True, env=env)))
        with open(run_path, "rb") as fh:
            run_lines = sum(1 for _ in fh)
        # the same hits as faiss: hbt-search scores on numpy's BLAS and orders printed-score
        # ties by docid, so only the members of a tie at the cut may differ
        hbt_scores, hbt_labels = searcher.search(queries, args.k)
        same_sets = float(np.mean((np.sort(hbt_labels, axis=1)
                                   == np.sort(faiss_hits["labels"], axis=1)).all(axis=1)))
        score_gap = float(np.abs(np.sort(hbt_scores, axis=1)
                                 - np.sort(faiss_hits["scores"], axis=1)).max())

    in_process = statistics.median(times["hbt"]) / statistics.median(times["faiss"])
    whole = statistics.median(times["hbt_process"]) / statistics.median(times["faiss_process"])
    vs_search = statistics.median(times["hbt_process"]) / statistics.median(times["faiss"])
    print(f"## hbt-search flat vs faiss IndexFlatIP.search\n\n"
          f"{args.queries} queries x {args.passages} passages, dim {args.dim}, k {args.k}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; "
          f"median of {args.repeats} (min–max); run: {run_lines} lines; the same top-{args.k} "
          f"as faiss for {same_sets:.2%} of queries, scores within {score_gap:.1e}\n\n"
          f"| what | faiss | hbt-search | ratio |\n|---|---|---|---|\n"
          f"| search (+ run written, hbt) in process | {spread_text(times['faiss'])} | "
          f"{spread_text(times['hbt'])} | {in_process:.3f} |\n"
          f"| whole process (load + search [+ write]) | {spread_text(times['faiss_process'])} | "
          f"{spread_text(times['hbt_process'])} | {whole:.3f} |\n"
          f"| hbt-search whole process vs faiss search alone | {spread_text(times['faiss'])} | "
          f"{spread_text(times['hbt_process'])} | {vs_search:.3f} |\n\n"
          f"target: in-process ratio <= 1.1 -> {'met' if in_process <= 1.1 else 'MISSED'}")
    setup = (f"{args.queries:,} queries x {args.passages:,} passages, dim {args.dim}, k {args.k}, "
             f"random unit vectors; faiss {faiss.__version__}, {faiss.omp_get_max_threads()} "
             f"threads; in process: faiss search alone vs hbt-tools' search + trec_eval order "
             f"+ run written; the same top-{args.k} as faiss for {same_sets:.2%} of queries, "
             f"scores within {score_gap:.1e}")
    rows = [{"what": what, **summary(times[name]), "unit": "s"} for name, what in (
        ("faiss", "faiss IndexFlatIP.search (in process)"),
        ("hbt", "hbt-search loop: search + tie order + run written (in process)"),
        ("faiss_process", "faiss: load .npy + add + search (whole process)"),
        ("hbt_process", "hbt-search command (whole process)"))]
    targets = [
        target("hbt-search flat, time vs faiss (in process)", "faiss IndexFlatIP.search", 1.1,
               ratio(times["hbt"], times["faiss"]), "≤ 1.1×", False, "×"),
        target("hbt-search flat, time vs faiss (whole process)",
               "faiss load + search process", 1.1,
               ratio(times["hbt_process"], times["faiss_process"]), "≤ 1.1×", False, "×"),
    ]
    print_targets(targets)
    write_results("search", {"title": "hbt-search (flat) vs faiss", "setup": setup,
                             "repeats": args.repeats, "rows": rows, "targets": targets,
                             "times": times}, args.json)

if __name__ == "__main__":
    main()
