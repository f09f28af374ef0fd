"""The exact LAReQA protocol: a hand-computed toy, pytrec_eval parity on full runs, properties."""
import itertools

import numpy as np
import pytest
import pytrec_eval
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt_tools.evaluation.lareqa import evaluate_lareqa
from hbt_tools.evaluation.significance import compare_lareqa, compare_lareqa_pooled
from hbt_tools.io import InputError

CANDIDATES = ["en-c1", "en-c2", "en-c3", "de-c1", "de-c2"]
# one-hot candidates make Q·Cᵀ = the query rows below, so every rank is known by hand
TOY_SCORES = {
    "en-q1": [0.9, 0.5, 0.95, 0.2, 0.6],
    "en-q2": [0.1, 0.8, 0.3, 0.7, 0.7],    # de-c1 and de-c2 tie: de-c2 (larger docid) first
    "de-q1": [0.4, 0.3, 0.2, 0.1, 0.5],
    "de-q2": [0.9, 0.1, 0.1, 0.2, 0.3],    # relevant only in de: skipped for de -> en
}
TOY_QRELS = {"en-q1": {"en-c1": 1, "de-c1": 1}, "en-q2": {"en-c2": 1, "de-c2": 1, "en-c3": 0},
             "de-q1": {"en-c1": 1, "de-c1": 1}, "de-q2": {"de-c2": 1}}


def toy():
    queries = np.array(list(TOY_SCORES.values()), dtype=np.float32)
    query_rows = [{"id": q, "lang": q[:2]} for q in TOY_SCORES]
    corpus = np.eye(len(CANDIDATES), dtype=np.float32)
    corpus_rows = [{"id": c, "lang": c[:2]} for c in CANDIDATES]
    return queries, query_rows, corpus, corpus_rows


def test_hand_computed_toy():
    report = evaluate_lareqa(*toy(), TOY_QRELS).report()
    # per (query, pool): rank of the relevant candidate -> AP = 1 / rank
    # en-q1: en pool c3 > c1 (rank 2), de pool de-c2 > de-c1 (rank 2)
    # en-q2: en pool c2 first, de pool tie -> de-c2 first
    # de-q1: de pool de-c2 > de-c1 (rank 2), en pool en-c1 first
    # de-q2: de pool de-c2 first; no relevant English candidate
    assert report["matrix"] == {"en": {"en": (1 / 2 + 1) / 2, "de": (1 / 2 + 1) / 2},
                                "de": {"de": (1 / 2 + 1) / 2, "en": 1.0}}
    assert report["mono"] == {"map": 0.75, "r@1": 0.5, "settings": 2}
    assert report["cross"] == {"map": (0.75 + 1.0) / 2, "r@1": (0.5 + 1.0) / 2, "settings": 2}
    # multi rankings: en-q1 c3 c1 de-c2 c2 de-c1 -> hits at 2, 5; en-q2 c2 de-c2 ... -> 1, 2
    # de-q1 de-c2 en-c1 en-c2 en-c3 de-c1 -> 2, 5; de-q2 en-c1 de-c2 -> 2
    ap = {"en-q1": (1 / 2 + 2 / 5) / 2, "en-q2": 1.0, "de-q1": (1 / 2 + 2 / 5) / 2,
          "de-q2": 1 / 2}
    en, de = (ap["en-q1"] + ap["en-q2"]) / 2, (ap["de-q1"] + ap["de-q2"]) / 2
    assert report["multi"]["map"] == pytest.approx((en + de) / 2)
    assert report["multi"]["r@10"] == 1.0
    assert report["rank_distance"] == {"mean": ((3 + 1) / 2 + (3 + 0) / 2) / 2,
                                       "per_language": {"de": 1.5, "en": 2.0}}
    assert report["per_language"]["de"] == {
        "mono": {"map": 0.75, "r@1": 0.5}, "cross": {"map": 1.0, "r@1": 1.0},
        "multi": {"map": pytest.approx(de), "r@10": 1.0}, "rank_distance": 1.5}
    assert report["queries"] == 4 and report["candidates"] == 5


def random_system(rng, langs=("de", "en", "zh"), groups=8, extra=3, dim=4, levels=3):
    """Coarse integer embeddings (many exact ties); group g's question in every language is
    relevant to candidate g of every language that has it."""
    query_rows, corpus_rows, qrels = [], [], {}
    present = {lang: [g for g in range(groups) if rng.random() < 0.8] for lang in langs}
    for lang in langs:
        corpus_rows += [{"id": f"{lang}-c{g}", "lang": lang} for g in present[lang]]
        corpus_rows += [{"id": f"{lang}-x{i}", "lang": lang} for i in range(extra)]
        for g in present[lang]:
            qid = f"{lang}-q{g}"
            query_rows.append({"id": qid, "lang": lang})
            qrels[qid] = {f"{other}-c{g}": 1 for other in langs if g in present[other]}
            qrels[qid][f"{lang}-x0"] = 0
    queries = rng.integers(-1, levels, (len(query_rows), dim)).astype(np.float32)
    corpus = rng.integers(-1, levels, (len(corpus_rows), dim)).astype(np.float32)
    return queries, query_rows, corpus, corpus_rows, qrels


def full_run(queries, query_rows, corpus, corpus_rows, qlang, pool_langs):
    scores = queries @ corpus.T
    return {q["id"]: {c["id"]: float(scores[i, j]) for j, c in enumerate(corpus_rows)
                      if c["lang"] in pool_langs}
            for i, q in enumerate(query_rows) if q["lang"] == qlang}


def trec_order_ranks(run_row, relevant):
    ordered = sorted(run_row, key=lambda d: (run_row[d], d), reverse=True)
    return [ordered.index(d) + 1 for d in relevant]


@pytest.mark.parametrize("seed", range(4))
def test_equals_pytrec_eval_on_full_runs(seed):
    queries, query_rows, corpus, corpus_rows, qrels = random_system(np.random.default_rng(seed))
    scores = evaluate_lareqa(queries, query_rows, corpus, corpus_rows, qrels)
    report, per_query = scores.report(), scores.per_query()
    langs = ["de", "en", "zh"]
    for x in langs:
        for y in langs:
            run = full_run(queries, query_rows, corpus, corpus_rows, x, {y})
            pool_qrels = {q: {d: r for d, r in rels.items() if d.startswith(y) and r > 0}
                          for q, rels in qrels.items() if q.startswith(x)}
            pool_qrels = {q: rels for q, rels in pool_qrels.items() if rels}
            expected = pytrec_eval.RelevanceEvaluator(pool_qrels, {"map", "recall.1"}).evaluate(
                {q: run[q] for q in pool_qrels})
            mean_ap = np.mean([v["map"] for v in expected.values()])
            assert report["matrix"][x][y] == pytest.approx(mean_ap, abs=1e-9)
            for qid, values in expected.items():
                cell = per_query[qid]["mono"] if x == y else per_query[qid]["cross"][y]
                assert cell["ap"] == pytest.approx(values["map"], abs=1e-9)
                assert cell["r@1"] == pytest.approx(values["recall_1"], abs=1e-9)
        run = full_run(queries, query_rows, corpus, corpus_rows, x, set(langs))
        multi_qrels = {q: rels for q, rels in qrels.items() if q.startswith(x)}
        expected = pytrec_eval.RelevanceEvaluator(multi_qrels, {"map", "recall.10"}).evaluate(run)
        for qid, values in expected.items():
            assert per_query[qid]["multi"]["ap"] == pytest.approx(values["map"], abs=1e-9)
            assert per_query[qid]["multi"]["r@10"] == pytest.approx(values["recall_10"], abs=1e-9)
            ranks = trec_order_ranks(run[qid], [d for d, r in qrels[qid].items() if r > 0])
            assert per_query[qid]["rank_distance"] == max(ranks) - min(ranks)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), levels=st.integers(1, 4), dim=st.integers(1, 6))
def test_rank_distance_at_least_relevant_minus_one(seed, levels, dim):
    queries, query_rows, corpus, corpus_rows, qrels = random_system(
        np.random.default_rng(seed), dim=dim, levels=levels)
    scores = evaluate_lareqa(queries, query_rows, corpus, corpus_rows, qrels)
    for qid, row in scores.per_query().items():
        n_relevant = sum(r > 0 for r in qrels[qid].values())
        assert row["rank_distance"] >= n_relevant - 1
        assert 0 <= row["multi"]["ap"] <= 1 and 0 <= row["multi"]["r@10"] <= 1


def test_compare_two_systems():
    rng = np.random.default_rng(0)
    queries, query_rows, corpus, corpus_rows, qrels = random_system(rng, groups=30, dim=16,
                                                                    levels=5)
    weak = evaluate_lareqa(queries, query_rows, corpus, corpus_rows, qrels)
    # the strong system embeds each question exactly like its relevant candidates
    group_vectors = rng.standard_normal((30, 16)).astype(np.float32)
    group_of = lambda row: int(row["id"].split("-")[1][1:])  # noqa: E731
    strong_corpus = np.array([group_vectors[group_of(r)] if "-c" in r["id"]
                              else rng.standard_normal(16) * 0.01 for r in corpus_rows],
                             dtype=np.float32)
    strong_queries = np.array([group_vectors[group_of(r)] for r in query_rows], dtype=np.float32)
    strong = evaluate_lareqa(strong_queries, query_rows, strong_corpus, corpus_rows, qrels)
    result = compare_lareqa(weak, strong, n_permutations=2000, seed=1)
    assert result["mono"]["map"]["b"] > result["mono"]["map"]["a"]
    assert result["mono"]["map"]["p_value"] == pytest.approx(1 / 2001)
    assert result["matrix"]["de"]["en"]["p_value"] < 0.01
    assert result == compare_lareqa(weak, strong, n_permutations=2000, seed=1)   # seeded
    same = compare_lareqa(weak, weak, n_permutations=200, seed=1)
    assert same["cross"]["map"]["p_value"] == 1.0 and same["cross"]["map"]["difference"] == 0


def test_pooled_compare_equals_exhaustive_swaps():
    """Two seeds' A/B pairs pooled: the statistic is the mean of the per-seed B − A that
    evaluate_lareqa reports, and the p-value matches an exhaustive reference that really swaps
    each (seed, query)'s embeddings between A and B and re-evaluates (2^8 assignments)."""
    queries, query_rows, corpus, corpus_rows = toy()
    rng = np.random.default_rng(26)   # a draw where every p-value lies in 0.1-0.5
    pairs = [(queries + rng.normal(0, 0.3, queries.shape).astype(np.float32),
              queries + rng.normal(0, 0.1, queries.shape).astype(np.float32)) for _ in range(2)]

    def evaluate(q):
        return evaluate_lareqa(q, query_rows, corpus, corpus_rows, TOY_QRELS)

    pooled = compare_lareqa_pooled([(evaluate(a), evaluate(b)) for a, b in pairs],
                                   n_permutations=40_000, seed=2)
    assert pooled["pairs"] == 2
    paths = [("mono", "map"), ("cross", "map"), ("multi", "map"), ("rank_distance", "mean")]

    def statistic(pair_queries):
        reports = [(evaluate(a).report(), evaluate(b).report()) for a, b in pair_queries]
        return {path: np.mean([rb[path[0]][path[1]] - ra[path[0]][path[1]] for ra, rb in reports])
                for path in paths}

    observed = statistic(pairs)
    units = [(p, q) for p in range(2) for q in range(len(query_rows))]
    at_least = dict.fromkeys(paths, 0)
    for flips in itertools.product((False, True), repeat=len(units)):
        swapped = [[a.copy(), b.copy()] for a, b in pairs]
        for (p, q), flip in zip(units, flips):
            if flip:
                swapped[p][0][q], swapped[p][1][q] = pairs[p][1][q], pairs[p][0][q]
        permuted = statistic(swapped)
        for path in paths:
            at_least[path] += abs(permuted[path]) >= abs(observed[path]) - 1e-12
    for path in paths:
        entry = pooled[path[0]][path[1]]
        assert entry["difference"] == pytest.approx(observed[path], abs=1e-12)
        assert entry["b"] - entry["a"] == pytest.approx(observed[path], abs=1e-12)
        assert entry["p_value"] == pytest.approx(at_least[path] / 2 ** len(units), abs=0.01)
        assert 0.05 < entry["p_value"] < 0.9   # neither trivially 1 nor at the floor
    # one pair is exactly the two-system test
    a, b = evaluate(pairs[0][0]), evaluate(pairs[0][1])
    assert compare_lareqa_pooled([(a, b)], 500, 1) == compare_lareqa(a, b, 500, 1)


def test_bad_inputs():
    queries, query_rows, corpus, corpus_rows = toy()
    with pytest.raises(InputError, match="dimension"):
        evaluate_lareqa(queries[:, :3], query_rows, corpus, corpus_rows, TOY_QRELS)
    with pytest.raises(InputError, match="not in the corpus"):
        evaluate_lareqa(queries, query_rows, corpus, corpus_rows, {"en-q1": {"nope": 1}})
    with pytest.raises(InputError, match="no query"):
        evaluate_lareqa(queries, query_rows, corpus, corpus_rows, {"other": {"en-c1": 1}})
    rows = [dict(r) for r in corpus_rows]
    rows[2]["lang"] = None
    with pytest.raises(InputError) as e:
        evaluate_lareqa(queries, query_rows, corpus, rows, TOY_QRELS)
    assert e.value.line == 3 and e.value.field == "lang"


def test_xquad_r_sized_pools():
    """11 languages x 1,190 queries against 13,014 candidates (XQuAD-R's pools), dim 384: every
    setting is there at full size (its time is measured in benchmarks/score_bench.py)."""
    rng = np.random.default_rng(0)
    langs = ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]
    per_lang = [1183] * 10 + [13014 - 1183 * 10]
    corpus_rows = [{"id": f"{l}-c{i}", "lang": l} for l, n in zip(langs, per_lang)
                   for i in range(n)]
    query_rows = [{"id": f"{l}-q{i}", "lang": l} for l in langs for i in range(1190)]
    qrels = {f"{l}-q{i}": {f"{m}-c{i % 1183}": 1 for m in langs} for l in langs
             for i in range(1190)}
    queries = rng.standard_normal((len(query_rows), 384)).astype(np.float32)
    corpus = rng.standard_normal((len(corpus_rows), 384)).astype(np.float32)
    report = evaluate_lareqa(queries, query_rows, corpus, corpus_rows, qrels).report()
    assert (report["mono"]["settings"], report["cross"]["settings"],
            report["multi"]["settings"]) == (11, 110, 11)
    assert report["queries"] == 13090 and report["candidates"] == 13014
    assert report["rank_distance"]["mean"] >= 10
