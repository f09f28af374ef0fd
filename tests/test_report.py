"""The reproduction report (hbt_tools.report) on a tiny results tree made by the real hbt-score."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hbt_tools.commands.score import main as hbt_score
from hbt_tools.io import save_embeddings
from hbt_tools.report import load_results, ordering_claims, write_report

LANGS = ("de", "el", "en")
GROUPS = 6
PAPER = Path(__file__).resolve().parents[1] / "examples" / "paper_2408.10536.json"
# How close each system's query vectors are to their answers: higher = better retrieval.
QUALITY = {"untrained": 0.3, "mono-s0": 0.5, "cross-s0": 1.0, "hybrid-s0": 3.0,
           "mono-s1": 0.6, "cross-s1": 1.1}


def score(*args):
    result = CliRunner().invoke(hbt_score, list(map(str, args)), catch_exceptions=False)
    assert result.exit_code == 0, result.output


def make_lareqa_system(root: Path, system: str, quality: float, seed: int) -> None:
    """Random answer vectors per group; candidates = answer + language noise; queries =
    quality x answer + noise. Scored with hbt-score --protocol lareqa into scores/SYSTEM."""
    rng = np.random.default_rng(seed)
    answers = np.random.default_rng(0).normal(size=(GROUPS, 16))
    cand_rows, cands, query_rows, queries = [], [], [], []
    for lang in LANGS:
        for g in range(GROUPS):
            cand_rows.append({"id": f"{lang}-c{g}", "lang": lang})
            cands.append(answers[g] + 0.3 * rng.normal(size=16))
            query_rows.append({"id": f"{lang}-q{g}", "lang": lang})
            queries.append(quality * answers[g] + rng.normal(size=16))
    emb = root / "embeddings" / system
    emb.mkdir(parents=True)
    save_embeddings(emb / "xquad-r.queries.npy", np.array(queries, np.float32), query_rows)
    save_embeddings(emb / "xquad-r.corpus.npy", np.array(cands, np.float32), cand_rows)
    (root / "scores" / system).mkdir(parents=True)
    score("--protocol", "lareqa", "--qrels", root / "qrels.trec",
          "--queries", emb / "xquad-r.queries.npy", "--corpus", emb / "xquad-r.corpus.npy",
          "-o", root / "scores" / system / "xquad-r.json")


@pytest.fixture(scope="module")
def results_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    (root / "config.json").write_text(json.dumps({
        "model": "toy", "steps": 3, "batch": 4, "seeds": "0 1", "alphas": "0 0.25 0.5 1",
        "train_langs": "de,en", "miracl_langs": "de sw", "smoke": 0}))
    (root / "qrels.trec").write_text("".join(
        f"{ql}-q{g} 0 {cl}-c{g} 1\n" for ql in LANGS for g in range(GROUPS) for cl in LANGS))
    for i, (system, quality) in enumerate(QUALITY.items()):
        make_lareqa_system(root, system, quality, seed=i)
    (root / "significance" / "xquad-r").mkdir(parents=True)
    a, b = root / "embeddings" / "mono-s0" / "xquad-r", root / "embeddings" / "hybrid-s0" / "xquad-r"
    score("--protocol", "lareqa", "--compare", "--permutations", 200, "--qrels",
          root / "qrels.trec", "--queries", f"{a}.queries.npy", "--corpus", f"{a}.corpus.npy",
          "--queries", f"{b}.queries.npy", "--corpus", f"{b}.corpus.npy",
          "-o", root / "significance" / "xquad-r" / "hybrid-s0-vs-mono-s0.json")
    # the test pooled over seeds (reproduce_paper.sh names it s0+1); hybrid-s1 is not there, so
    # hybrid-s0 stands in for it
    m1 = root / "embeddings" / "mono-s1" / "xquad-r"
    score("--protocol", "lareqa", "--compare", "--permutations", 200, "--qrels",
          root / "qrels.trec", *(arg for system in (a, b, m1, b) for arg in (
              "--queries", f"{system}.queries.npy", "--corpus", f"{system}.corpus.npy")),
          "-o", root / "significance" / "xquad-r" / "hybrid-s0+1-vs-mono-s0+1.json")
    # MIRACL-mini, one language of one system, scored from a TREC run
    (root / "miracl-qrels.trec").write_text("m1 0 d1 1\nm2 0 d2 1\n")
    (root / "miracl-run.trec").write_text("m1 Q0 d1 1 2.0 x\nm2 Q0 d1 1 2.0 x\nm2 Q0 d2 2 1.0 x\n")
    score("--qrels", root / "miracl-qrels.trec", "-m", "ndcg@10", "-m", "p@10", "-m",
          "recall@100", root / "miracl-run.trec",
          "-o", root / "scores" / "untrained" / "miracl-mini.de.json")
    for system in ("mono-s0", "hybrid-s0"):
        (root / "models" / system).mkdir(parents=True)
        (root / "models" / system / "train_log.jsonl").write_text("".join(
            json.dumps({"step": s, "loss": 3.0 / s, "kind": "mono"}) + "\n" for s in range(1, 9)))
    (root / "timings.jsonl").write_text('{"step": "train-mono-s0", "seconds": 120.0}\n'
                                        '{"step": "encode-corpus-untrained-xquad-r", '
                                        '"seconds": 30}\n')
    return root


def claim(results, text):
    return next(c for c in ordering_claims(results, json.loads(PAPER.read_text()))
                if c.text == text)


def test_report_renders_numbers_figures_and_missing_pieces(results_tree, tmp_path):
    out = tmp_path / "docs" / "results.md"
    missing = write_report(results_tree, PAPER, out)
    text = out.read_text()
    hybrid = json.loads((results_tree / "scores" / "hybrid-s0" / "xquad-r.json").read_text())
    assert f"{hybrid['mono']['map']:.3f}" in text
    assert "SMOKE" not in text
    # the paper's rows are quoted from the data file
    assert "| paper XLM-R | Hybrid |  | 0.798 | 0.705 | 0.593 | 0.648 | 0.623 | 0.512 |" in text
    # two seeds of mono: mean ± std of the two runs
    monos = [json.loads((results_tree / "scores" / s / "xquad-r.json").read_text())["mono"]["map"]
             for s in ("mono-s0", "mono-s1")]
    assert f"{np.mean(monos):.3f} ± {np.std(monos, ddof=1):.3f}" in text
    # missing pieces are named, not fatal
    assert any("hybrid-s1" in m for m in missing)
    assert any(m.startswith("MLQA-R scores") for m in missing)
    assert "MIRACL-mini untrained: sw" in missing
    # 0, 0.5 and 1 are the cross-s0, hybrid-s0 and mono-s0 runs
    assert "alpha sweep (XQuAD-R): alpha 0.25" in missing
    assert "- MIRACL-mini mono-s0: all languages" in text
    # significance from the --compare output
    p = json.loads((results_tree / "significance" / "xquad-r" /
                    "hybrid-s0-vs-mono-s0.json").read_text())["mono"]["map"]["p_value"]
    assert f"p={p:.4f}" in text
    # the agreement table gives the test pooled over seeds, then every seed's test (here
    # seed 0 only)
    pooled = json.loads((results_tree / "significance" / "xquad-r" /
                         "hybrid-s0+1-vs-mono-s0+1.json").read_text())["mono"]["map"]
    assert pooled["p_value"] != p
    assert f"p={pooled['p_value']:.4f} (seeds pooled), p={p:.4f} (seed 0) |" in text
    assert any("hybrid-s0+1-vs-cross-s0+1" in m and "hybrid-s0+1-vs-mono-s0+1" not in m
               for m in missing)
    figures = sorted(f.name for f in (out.parent / "figures").iterdir())
    assert figures == ["alpha-sweep.png", "heatmap-xquad-r-cross-s0.png", "heatmap-xquad-r-hybrid-s0.png",
                       "heatmap-xquad-r-mono-s0.png", "loss-curves.png"]
    assert all((out.parent / "figures" / f).read_bytes()[:4] == b"\x89PNG" for f in figures)
    assert "(figures/heatmap-xquad-r-hybrid-s0.png)" in text


def test_agreement_statements_follow_the_numbers(results_tree, tmp_path):
    text = "Hybrid ≥ X-X-mono on XQuAD-R Mo mAP"
    before = claim(load_results(results_tree), text)
    assert before.paper == {"XLM-R": True, "LaBSE": True}
    assert before.ours is True and before.verdict == "agrees"
    # Swap the Hybrid and X-X-mono runs of every seed: the same statement must flip.
    swapped = tmp_path / "swapped"
    shutil.copytree(results_tree, swapped)
    scores = swapped / "scores"
    for seed in ("0", "1"):
        hybrid, mono = scores / f"hybrid-s{seed}", scores / f"mono-s{seed}"
        if hybrid.exists():
            hybrid.rename(scores / "tmp")
            mono.rename(hybrid)
            (scores / "tmp").rename(mono)
        else:
            mono.rename(hybrid)
    after = claim(load_results(swapped), text)
    assert after.ours is False and after.verdict == "disagrees"
    # Rank distance: lower is better, so the statement reads "≤".
    distance = claim(load_results(results_tree), "Hybrid ≤ X-X-mono on XQuAD-R rank distance")
    ours = load_results(results_tree).lareqa
    assert distance.ours == (ours[("hybrid-s0", "xquad-r")]["rank_distance"]["mean"]
                             <= np.mean([ours[(s, "xquad-r")]["rank_distance"]["mean"]
                                         for s in ("mono-s0", "mono-s1")]))
    # Not measured (no MIRACL-mini for the trained systems): said so, not guessed.
    assert claim(load_results(results_tree),
                 "Hybrid ≥ X-Y on MIRACL nDCG@10 (ours: MIRACL-mini)"
                 ).verdict == "not measured yet"


def test_smoke_results_are_headed_as_such(results_tree, tmp_path):
    smoke = tmp_path / "smoke"
    shutil.copytree(results_tree, smoke)
    config = json.loads((smoke / "config.json").read_text())
    (smoke / "config.json").write_text(json.dumps(dict(config, smoke=1)))
    write_report(smoke, PAPER, tmp_path / "results.md")
    assert (tmp_path / "results.md").read_text().startswith("# SMOKE run — not results")


def test_wall_time_groups_commands_into_units_and_projects_the_protocol(tmp_path):
    from hbt_tools.report import DEFAULT_CONFIG, Results, timing_table

    config = dict(DEFAULT_CONFIG, seeds="0 1", alphas="0 0.25 0.5 1", miracl_langs="de sw")
    results = Results(tmp_path, config)
    steps = {"prepare-pairs": 1, "batches-mono-s0": 1,
             "train-mono-s0": 300, "train-cross-s0": 420, "train-hybrid-s0": 360,
             # one XQuAD-R evaluation = both encodings + score: 60 + 100 + 20 = 180 s
             "encode-queries-untrained-xquad-r": 60, "encode-corpus-untrained-xquad-r": 100,
             "score-untrained-xquad-r": 20, "encode-queries-mono-s0-xquad-r": 50,
             "encode-corpus-mono-s0-xquad-r": 150, "score-mono-s0-xquad-r": 40,  # 240 s
             "compare-hybrid-s0-vs-mono-s0-xquad-r": 6,
             # MIRACL-mini, untrained x de: 30 + 500 + 5 + 4 + 1 = 540 s
             "encode-queries-untrained-miracl-mini-de": 30,
             "encode-corpus-untrained-miracl-mini-de": 500, "index-untrained-miracl-mini-de": 5,
             "search-untrained-miracl-mini-de": 4, "score-untrained-miracl-mini-de": 1,
             # still running (no score yet): not a unit's cost
             "encode-queries-untrained-miracl-mini-sw": 3, "encode-queries-cross-s0-xquad-r": 9}
    results.timings = [{"step": step, "seconds": s} for step, s in steps.items()]
    # CPU time recorded for some commands only: it counts for a unit only when all of the
    # unit's commands have it (mono-s0's XQuAD-R evaluation has it for its score alone)
    cpu = {"train-mono-s0": 570, "train-cross-s0": 800, "score-mono-s0-xquad-r": 30}
    for row in results.timings:
        if row["step"] in cpu:
            row["cpu_seconds"] = cpu[row["step"]]
    rows = {line.split(" | ")[0].strip("| *"): line.split(" | ")[1:]
            for line in timing_table(results).splitlines() if line.startswith("|")}
    # units: 3 strategies x 2 seeds + alpha 0.25 trainings; evaluations add the untrained
    # model (and on XQuAD-R the alpha run); significance tests: 2 per seed + 2 pooled over
    # seeds; 4 systems x 2 MIRACL languages
    assert rows["training"] == ["7", "3", "18.0", "22.8 (2)", "6.0", "42 |"]
    assert rows["XQuAD-R evaluation"] == ["8", "2", "7.0", "–", "3.5", "28 |"]
    assert rows["XQuAD-R significance test"] == ["6", "1", "0.1", "–", "0.1", "1 |"]
    assert rows["MLQA-R evaluation"] == ["7", "0", "–", "–", "–", "– |"]
    assert rows["MIRACL-mini (system x language)"] == ["8", "1", "9.0", "–", "9.0", "72 |"]
    assert rows["total"][-1] == "**143** + unmeasured kinds |"   # 42 + 28 + 0.6 + 72 min


def test_a_command_run_again_counts_once_with_its_latest_time(results_tree):
    with open(results_tree / "timings.jsonl", "a") as fh:
        fh.write('{"step": "train-mono-s0", "seconds": 90.0}\n')
    timings = load_results(results_tree).timings
    assert [(row["step"], row["seconds"]) for row in timings] == [
        ("train-mono-s0", 90.0), ("encode-corpus-untrained-xquad-r", 30)]


def test_equal_numbers_are_a_tie_not_an_ordering(results_tree):
    """MIRACL-mini's Recall@100 can be 1.000 for every system (every relevant passage in the
    top 100): equal numbers neither agree nor disagree with the paper's ordering."""
    from hbt_tools.report import claims_section, miracl_tables

    results = load_results(results_tree)
    results.miracl = {system: {"es": {"ndcg@10": ndcg, "recall@100": 1.0}}
                      for system, ndcg in (("hybrid-s0", 0.7), ("mono-s0", 0.6),
                                           ("cross-s0", 0.8))}
    recall = claim(results, "Hybrid ≥ X-X-mono on MIRACL Recall@100 (ours: MIRACL-mini)")
    assert recall.tie and recall.verdict == "tie in ours"
    ndcg = claim(results, "Hybrid ≥ X-X-mono on MIRACL nDCG@10 (ours: MIRACL-mini)")
    assert not ndcg.tie and ndcg.ours is True and ndcg.verdict == "disagrees"  # paper: no
    text = claims_section([recall, ndcg])
    assert text.startswith("Of 1 orderings that are measured and unanimous in the paper, ours "
                           "agrees on 0 and disagrees on 1. On 1 more our two numbers are "
                           "exactly equal")
    assert "| tie | ours 1.000 vs 1.000" in text
    # the MIRACL-mini section says where a metric cannot order the systems
    tables = miracl_tables(results, json.loads(PAPER.read_text()))
    assert ("- Recall@100: the same for all 3 systems in 1 of 1 languages (es): 1.000 "
            "everywhere") in tables
    assert "- nDCG@10" not in tables


def test_miracl_change_figure_orders_seen_languages_first(results_tree, tmp_path):
    from hbt_tools.report import _miracl_gains, draw_figures

    results = load_results(results_tree)   # trained on de and en
    ndcg = {"untrained": (0.5, 0.4), "mono-s0": (0.6, 0.3), "cross-s0": (0.55, 0.45),
            "hybrid-s0": (0.7, 0.5)}
    results.miracl = {s: {"sw": {"ndcg@10": sw}, "de": {"ndcg@10": de}}
                      for s, (de, sw) in ndcg.items()}
    results.miracl["mono-s0"]["fi"] = {"ndcg@10": 0.9}   # not every system has fi: left out
    values, seen = _miracl_gains(results)
    assert list(values) == ["de", "sw"] and seen == 1
    assert values["de"] == pytest.approx({"X-X-mono": 0.1, "X-Y": 0.05, "Hybrid": 0.2})
    assert values["sw"] == pytest.approx({"X-X-mono": -0.1, "X-Y": 0.05, "Hybrid": 0.1})
    drawn = draw_figures(results, tmp_path)
    assert (tmp_path / "miracl-mini-ndcg-change.png").read_bytes()[:4] == b"\x89PNG"
    assert "miracl-mini-ndcg-change.png" in drawn.values()
