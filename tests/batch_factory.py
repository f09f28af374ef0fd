"""Synthetic batches.jsonl for training tests (until tests can call hbt-make-batches)."""
import json
import os
import random

from tiny_models import TEXT

LANGS = ("en", "de", "es", "zh")


def _sentences():
    with open(TEXT, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def make_batches(n_steps: int, items: int = 6, negatives: int = 1, seed: int = 0):
    """``n_steps`` batch objects of ``items`` items with ``negatives`` hard negatives each."""
    rng = random.Random(seed)
    sentences = _sentences()
    batches = []
    for step in range(n_steps):
        kind = rng.choice(["mono", "cross"])
        rows = []
        for i in range(items):
            q_lang = rng.choice(LANGS)
            p_lang = q_lang if kind == "mono" else rng.choice([x for x in LANGS if x != q_lang])
            rows.append({"group": f"g{step}-{i}", "query": rng.choice(sentences)[:60],
                         "query_lang": q_lang, "positive": rng.choice(sentences),
                         "positive_lang": p_lang,
                         "negatives": [rng.choice(sentences) for _ in range(negatives)]})
        batches.append({"step": step, "kind": kind, "items": rows})
    return batches


def write_batches(path, batches) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for batch in batches:
            fh.write(json.dumps(batch, ensure_ascii=False) + "\n")
    return os.fspath(path)
