"""Benchmark: hbt-score on a 1M-line run with MIRACL-style qrels vs pytrec_eval and ranx.

All three score the same files (median of --repeats, min–max, repeats interleaved), each
including reading the run and qrels files, and the script checks that the numbers agree to
1e-9. Two comparisons: in process (one Python process, imports done) and whole process (a fresh
interpreter each: start-up, imports, reading, scoring, printing; ``bin/hbt-score`` for us, this
script's ``--peer NAME`` for the others). Also timed: ``hbt-score --protocol lareqa`` on the
whole XQuAD-R (target < 20 s).

    .venv/bin/python benchmarks/score_bench.py [--queries 10000] [--depth 100] [--repeats 3]
        [--xquad-r DIR] [--json PATH]

ranx is optional (``pip install ranx``); it is skipped when missing. Scores are random floats
without ties, since ranx does not break ties as trec_eval does.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import (ROOT, XQUAD_R, print_targets, ratio, summary, target, timed_process,
                    write_results)

sys.path.insert(0, ROOT)

METRICS = {"ndcg@10": ("ndcg_cut.10", "ndcg_cut_10", "ndcg@10"),
           "recall@100": ("recall.100", "recall_100", "recall@100"),
           "map": ("map", "map", "map"),
           "mrr": ("recip_rank", "recip_rank", "mrr")}


def make_data(directory: str, n_queries: int, depth: int, seed: int = 0) -> tuple[str, str]:
    """A run of n_queries x depth lines and qrels with ~10 judged passages per query
    (MIRACL-style: ~3 relevant, the rest judged 0; some judged passages not retrieved)."""
    rng = np.random.default_rng(seed)
    run_path, qrels_path = os.path.join(directory, "run.trec"), os.path.join(directory, "qrels")
    with open(run_path, "w") as run, open(qrels_path, "w") as qrels:
        for q in range(n_queries):
            docs = rng.choice(5_000_000, size=depth, replace=False)
            scores = np.sort(rng.random(depth))[::-1] * 100
            run.write("".join(f"q{q} Q0 doc{d} {r} {s:.6f} bench\n"
                              for r, (d, s) in enumerate(zip(docs, scores), 1)))
            judged = list(rng.choice(docs, size=8, replace=False)) + \
                list(rng.choice(5_000_000, size=2))
            rels = rng.random(len(judged)) < 0.3
            rels[0] = True
            qrels.write("".join(f"q{q} 0 doc{d} {int(r)}\n" for d, r in zip(judged, rels)))
    return run_path, qrels_path


def hbt_in_process(run_path, qrels_path):
    from hbt_tools.evaluation.trec_eval import evaluate_run
    from hbt_tools.metrics import parse_metrics
    from hbt_tools.trec import read_qrels, read_run_columns

    scores = evaluate_run(read_run_columns(run_path), read_qrels(qrels_path),
                          parse_metrics(list(METRICS)))
    return scores.means()


def hbt_command(run_path, qrels_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "hbt-score"), "--qrels",
                          qrels_path, *[a for m in METRICS for a in ("-m", m)], run_path],
                         check=True, capture_output=True)
    return json.loads(out.stdout)["metrics"]


def pytrec_eval_scores(run_path, qrels_path):
    import pytrec_eval

    qrels, run = {}, {}
    with open(qrels_path) as f:
        for line in f:
            q, _, d, r = line.split()
            qrels.setdefault(q, {})[d] = int(r)
    with open(run_path) as f:
        for line in f:
            q, _, d, _, s, _ = line.split()
            run.setdefault(q, {})[d] = float(s)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {m[0] for m in METRICS.values()})
    per_query = evaluator.evaluate(run)
    return {name: float(np.mean([v[m[1]] for v in per_query.values()]))
            for name, m in METRICS.items()}


def ranx_scores(run_path, qrels_path):
    from ranx import Qrels, Run, evaluate

    qrels = Qrels.from_file(qrels_path, kind="trec")
    run = Run.from_file(run_path, kind="trec")
    result = evaluate(qrels, run, [m[2] for m in METRICS.values()])
    return {name: float(result[m[2]]) for name, m in METRICS.items()}


PEERS = {"pytrec_eval": pytrec_eval_scores, "ranx": ranx_scores}


def peer_command(name: str):
    """The peer as a whole process: this script with ``--peer NAME RUN QRELS``."""
    def run(run_path, qrels_path):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--peer", name,
                              run_path, qrels_path], check=True, capture_output=True)
        return json.loads(out.stdout)
    return run


def lareqa_inputs(xquad_r: str, directory: str) -> list[str]:
    """XQuAD-R pools (all 11 languages) with random unit embeddings: the protocol's cost does
    not depend on the values. Returns the hbt-score arguments."""
    from hbt_tools.io import iter_jsonl, save_embeddings

    pools = os.path.join(directory, "xquad-r")
    subprocess.run([sys.executable, os.path.join(ROOT, "bin", "hbt-prepare"), "lareqa",
                    xquad_r, "-o", pools], check=True, env=dict(os.environ, PYTHONPATH=ROOT))
    rng = np.random.default_rng(0)
    arguments = ["--protocol", "lareqa", "--qrels", os.path.join(pools, "qrels.trec")]
    for kind, option in (("queries", "--queries"), ("corpus", "--corpus")):
        rows = [row for _, row in iter_jsonl(os.path.join(pools, f"{kind}.jsonl"))]
        vectors = rng.standard_normal((len(rows), 384), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        save_embeddings(os.path.join(directory, f"{kind}.npy"), vectors, rows)
        arguments += [option, os.path.join(directory, f"{kind}.npy")]
    return arguments


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--peer":   # a peer as a whole process
        print(json.dumps(PEERS[sys.argv[2]](*sys.argv[3:])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--xquad-r", default=XQUAD_R,
                        help="XQuAD-R folder for the LAReQA protocol timing ('' = skip)")
    parser.add_argument("--json", help="results file (default benchmarks/results/score.json)")
    args = parser.parse_args()
    peers = ["pytrec_eval"]
    if importlib.util.find_spec("ranx") is not None:
        ranx_scores(*make_data(tempfile.mkdtemp(), 20, 10))   # compile numba kernels first
        peers.append("ranx")
    else:
        print("ranx not installed: skipped", file=sys.stderr)
    tools = [("hbt-score (command)", hbt_command), ("hbt-score (in process)", hbt_in_process)]
    tools += [(peer, PEERS[peer]) for peer in peers]
    tools += [(f"{peer} (whole process)", peer_command(peer)) for peer in peers]
    times = {name: [] for name, _ in tools}
    values = {}
    lareqa_times = []
    with tempfile.TemporaryDirectory() as directory:
        run_path, qrels_path = make_data(directory, args.queries, args.depth)
        lareqa = lareqa_inputs(args.xquad_r, directory) if args.xquad_r else None
        lines = args.queries * args.depth
        for _ in range(args.repeats):          # interleaved: every tool sees the same load
            for name, function in tools:
                start = time.perf_counter()
                values[name] = function(run_path, qrels_path)
                times[name].append(time.perf_counter() - start)
            if lareqa:
                lareqa_times.append(timed_process([sys.executable,
                                                   os.path.join(ROOT, "bin", "hbt-score"),
                                                   *lareqa, "-o", os.path.join(directory,
                                                                               "lareqa.json")]))
    reference = values["pytrec_eval"]
    setup = (f"{lines:,} run lines, {args.queries:,} queries x {args.depth}, ~10 judged "
             f"passages a query (MIRACL-style qrels); metrics {', '.join(METRICS)}; every tool "
             f"reads the run and qrels files; whole process = a fresh interpreter (start-up, "
             f"imports, JSON output included): bin/hbt-score, or this script's --peer NAME")
    print(f"{setup}; median of {args.repeats} (min-max), seconds\n")
    print("| tool | time | vs hbt-score (command) | " + " | ".join(METRICS) + " |")
    print("|---" * (3 + len(METRICS)) + "|")
    ours = statistics.median(times["hbt-score (command)"])
    for name in times:
        median = statistics.median(times[name])
        print(f"| {name} | {median:.2f} ({min(times[name]):.2f}-{max(times[name]):.2f}) | "
              f"{median / ours:.2f}x | " + " | ".join(f"{values[name][m]:.6f}" for m in METRICS)
              + " |")
    for name in values:
        for metric in METRICS:
            if abs(values[name][metric] - reference[metric]) > 1e-9:
                print(f"MISMATCH: {name} {metric} = {values[name][metric]!r}, pytrec_eval "
                      f"{reference[metric]!r}", file=sys.stderr)
                sys.exit(1)
    print("\nall tools agree with pytrec_eval to 1e-9")
    targets = [target("hbt-score command, speed-up", f"{peer} (whole process)", 1,
                      ratio(times[f"{peer} (whole process)"], times["hbt-score (command)"]),
                      "> 1× (faster), same numbers", True, "×") for peer in peers]
    targets += [target("hbt-score in process, speed-up", f"{peer} (in process, reading files)",
                       1, ratio(times[peer], times["hbt-score (in process)"]),
                       "> 1× (faster), same numbers", True, "×") for peer in peers]
    rows = [{"what": name, **summary(t), "unit": "s"} for name, t in times.items()]
    if lareqa_times:
        targets.append(target("hbt-score --protocol lareqa, XQuAD-R (11 languages, whole "
                              "command)", "—", 20, summary(lareqa_times), "< 20 s", False, " s"))
        rows.append({"what": "hbt-score --protocol lareqa, XQuAD-R 13,090 queries x 13,014 "
                             "candidates (command)", **summary(lareqa_times), "unit": "s"})
    print_targets(targets)
    write_results("score", {"title": "hbt-score vs pytrec_eval and ranx", "setup": setup,
                            "repeats": args.repeats, "rows": rows, "targets": targets,
                            "values": values}, args.json)


if __name__ == "__main__":
    main()
