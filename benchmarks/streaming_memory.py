"""Peak memory of hbt-prepare miracl and hbt-encode --shard against the size of a JSONL corpus.

Both commands stream their corpus, so their peak RSS should stay flat while the input grows
(issue 6: a 2 GB corpus must stream through). For each size the script writes a MIRACL-style
corpus (``docid``, ``title``, ``text``; ~1 KB per passage) under a temporary folder, runs

    hbt-prepare miracl --corpus corpus.jsonl ...        -> OUT/corpus.jsonl (same size)
    hbt-encode --shard 0/50 OUT/corpus.jsonl -o c.npy   (reads every line, encodes 1 in 50)

each in its own process, prints peak RSS (from wait4) and wall time, and deletes the files.
The encoder is a tiny random model (tests/tiny_models.py) unless --model names another.

    .venv/bin/python benchmarks/streaming_memory.py --sizes-mb 20 200 2000
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("water city river music school light house summer bank night Stadt Wasser ciudad "
         "casa música été maison город вода 城市 音乐 水 ஆறு நகரம்").split()


def write_corpus(path: str, megabytes: float, seed: int = 0) -> int:
    """A MIRACL-style corpus of about ``megabytes`` MB; returns its number of passages."""
    rng = random.Random(seed)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))
                 for _ in range(2000)]
    target, written, rows = int(megabytes * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target:
            text = ". ".join(rng.choice(sentences) for _ in range(6))
            line = f'{{"docid": "{rows}#0", "title": "Title {rows % 977}", "text": "{text}"}}\n'
            fh.write(line)
            written += len(line.encode("utf-8"))
            rows += 1
    return rows


def measure(args: list[str]) -> tuple[float, float]:
    """Run ``bin/ARGS[0] ARGS[1:]``; return (peak RSS in MB, wall seconds); fail loudly."""
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", args[0]), *args[1:]],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[20, 200])
    parser.add_argument("--model", help="Encoder for hbt-encode (default: a tiny random model).")
    parser.add_argument("--shard", default="0/50")
    parser.add_argument("--chunk-size", default="8192",
                        help="hbt-encode --chunk-size: rows held per chunk (up to 3 chunks are in "
                             "flight), so encode memory levels off once a chunk fills.")
    parser.add_argument("--workdir", default=None, help="Where the corpora go (default: $TMPDIR).")
    options = parser.parse_args()

    work = tempfile.mkdtemp(prefix="hbt-streaming-", dir=options.workdir)
    try:
        # The tiny model is made in a child process: wait4's peak RSS of a command counts the
        # memory of this process it was forked from, which must stay small (no torch here).
        model = options.model or subprocess.run(
            [sys.executable, "-c", "import sys; from tiny_models import make_tiny_model; "
             "print(make_tiny_model(sys.argv[1], 'xlm-roberta'))", work],
            env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests")), check=True,
            capture_output=True, text=True).stdout.strip()
        with open(os.path.join(work, "topics.tsv"), "w") as fh:
            fh.write("q1\tWhere is the river?\n")
        with open(os.path.join(work, "qrels.tsv"), "w") as fh:
            fh.write("q1 Q0 7#0 1\n")
        print(f"{'input MB':>9} {'passages':>10} {'prepare MB RSS':>15} {'s':>7} "
              f"{'encode ' + options.shard + ' MB RSS':>22} {'s':>7}", flush=True)
        for size in options.sizes_mb:
            corpus = os.path.join(work, "corpus.jsonl")
            out = os.path.join(work, "prepared")
            passages = write_corpus(corpus, size)
            prepare_rss, prepare_s = measure(
                ["hbt-prepare", "miracl", "--topics", os.path.join(work, "topics.tsv"),
                 "--qrels", os.path.join(work, "qrels.tsv"), "--corpus", corpus, "--lang", "xx",
                 "-o", out])
            os.remove(corpus)
            encode_rss, encode_s = measure(
                ["hbt-encode", "--model", model, "--kind", "passage", "--shard", options.shard,
                 "--chunk-size", options.chunk_size,
                 os.path.join(out, "corpus.jsonl"), "-o", os.path.join(work, "c.npy")])
            shutil.rmtree(out)
            print(f"{size:>9.0f} {passages:>10} {prepare_rss:>15.0f} {prepare_s:>7.1f} "
                  f"{encode_rss:>22.0f} {encode_s:>7.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
