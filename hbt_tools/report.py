"""Markdown report of a paper reproduction (``examples/reproduce_paper.sh``) from its JSON outputs.

Reads a results tree::

    config.json                        the run's settings (steps, batch, seeds, alphas, ...)
    timings.jsonl                      {"step", "seconds", "cpu_seconds"} per command
    scores/SYSTEM/{xquad-r,mlqa-r}.json        hbt-score --protocol lareqa
    scores/SYSTEM/miracl-mini.LANG.json        hbt-score -m ndcg@10 -m p@10 -m recall@100
    significance/BENCH/HYBRID-vs-BASELINE.json hbt-score --protocol lareqa --compare
    models/SYSTEM/train_log.jsonl              hbt-train

SYSTEM is ``untrained``, ``{mono,cross,hybrid}-s{SEED}`` or ``hybrid-a{ALPHA}-s{SEED}``. Every
number in the report comes from these files or from the paper's numbers (a JSON file, see
``examples/paper_2408.10536.json``); what is missing is listed instead of failing.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .evaluation import plots

STRATEGIES = ("mono", "cross", "hybrid")
NAMES = {"untrained": "untrained", "mono": "X-X-mono", "cross": "X-Y", "hybrid": "Hybrid"}
BENCHMARKS = {"xquad-r": "XQuAD-R", "mlqa-r": "MLQA-R"}
MIRACL_ZERO_SHOT = ("bn", "fa", "fi", "fr", "id", "ja", "ko", "sw", "te", "yo")
# The 15 MIRACL languages the paper's Tables 12-13 average over.
PAPER_MIRACL_LANGS = ("sw", "bn", "hi", "ko", "th", "te", "fi", "ja", "es", "fr", "ru", "zh",
                      "fa", "ar", "id")
DEFAULT_CONFIG = {"seeds": "0 1 2", "alphas": "0 0.25 0.5 0.75 1",
                  "train_langs": "ar,de,en,es,hi,ru,th,tr,zh",
                  "miracl_langs": "ar bn de en es fa fi fr hi id ja ko ru sw te th yo zh"}


@dataclass(frozen=True)
class Metric:
    key: str          # the paper file's key
    label: str
    path: tuple       # where hbt-score's LAReQA JSON holds it
    higher_is_better: bool = True
    decimals: int = 3


LAREQA_MAP = (Metric("mono_map", "Mo", ("mono", "map")),
              Metric("cross_map", "Cr", ("cross", "map")),
              Metric("multi_map", "Mul", ("multi", "map")))
LAREQA_RECALL = (Metric("mono_r@1", "Mo R@1", ("mono", "r@1")),
                 Metric("cross_r@1", "Cr R@1", ("cross", "r@1")),
                 Metric("multi_r@10", "Mul R@10", ("multi", "r@10")))
RANK_DISTANCE = Metric("rank_distance", "rank distance", ("rank_distance", "mean"), False, 1)
MIRACL_METRICS = (("ndcg@10", "nDCG@10"), ("p@10", "P@10"), ("recall@100", "Recall@100"))


@dataclass
class Results:
    root: Path
    config: dict
    lareqa: dict = field(default_factory=dict)        # (system, bench) -> report
    miracl: dict = field(default_factory=dict)        # system -> {lang: metrics}
    significance: dict = field(default_factory=dict)  # (bench, hybrid, baseline) -> report
    train_logs: dict = field(default_factory=dict)    # system -> [(step, loss)]
    timings: list = field(default_factory=list)

    @property
    def seeds(self) -> list[str]:
        return self.config["seeds"].split()

    @property
    def systems(self) -> list[str]:
        """The models every LAReQA benchmark evaluates: untrained, then each strategy x seed."""
        return ["untrained"] + [f"{s}-s{seed}" for seed in self.seeds for s in STRATEGIES]

    @property
    def miracl_systems(self) -> list[str]:
        """MIRACL-mini evaluates one seed: untrained, then each strategy's first-seed run."""
        return ["untrained"] + [f"{s}-s{self.first_seed}" for s in STRATEGIES]

    @property
    def first_seed(self) -> str:
        return self.seeds[0]

    @property
    def train_langs(self) -> set[str]:
        return set(self.config["train_langs"].split(","))

    @property
    def pooled_tag(self) -> str | None:
        """How reproduce_paper.sh names a test pooled over every seed (s0+1+2), if several."""
        return "s" + "+".join(self.seeds) if len(self.seeds) > 1 else None

    def alpha_systems(self) -> dict[float, str]:
        """The run behind each alpha: hybrid batches at alpha 0 / 0.5 / 1 are byte for byte
        the X-Y / Hybrid / X-X-mono batches of the same seed, so those runs stand for them."""
        same = {0.0: "cross", 0.5: "hybrid", 1.0: "mono"}
        return {float(a): (f"{same[float(a)]}-s{self.first_seed}" if float(a) in same
                           else f"hybrid-a{a}-s{self.first_seed}")
                for a in self.config["alphas"].split()}


def load_results(root: str | os.PathLike) -> Results:
    root = Path(root)
    config = dict(DEFAULT_CONFIG)
    if (root / "config.json").exists():
        config.update(json.loads((root / "config.json").read_text()))
    results = Results(root, config)
    for path in sorted(root.glob("scores/*/*.json")):
        system, name = path.parent.name, path.stem
        if name in BENCHMARKS:
            results.lareqa[(system, name)] = json.loads(path.read_text())
        elif name.startswith("miracl-mini."):
            lang = name.split(".", 1)[1]
            results.miracl.setdefault(system, {})[lang] = json.loads(path.read_text())["metrics"]
    for path in sorted(root.glob("significance/*/*-vs-*.json")):
        hybrid, baseline = path.stem.split("-vs-")
        results.significance[(path.parent.name, hybrid, baseline)] = json.loads(path.read_text())
    for path in sorted(root.glob("models/*/train_log.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        results.train_logs[path.parent.name] = [(r["step"], r["loss"]) for r in rows]
    if (root / "timings.jsonl").exists():
        rows = [json.loads(line) for line in
                (root / "timings.jsonl").read_text().splitlines() if line.strip()]
        # a command run again (a rescore after a protocol change) supersedes its earlier time
        results.timings = list({row["step"]: row for row in rows}.values())
    return results


# ------------------------------------------------------------------------------------ numbers

def _get(tree: dict, path: tuple):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def seed_values(results: Results, strategy: str, bench: str, path: tuple) -> list[float]:
    """One value per seed that has a result (the untrained model counts as one 'seed')."""
    systems = ["untrained"] if strategy == "untrained" else [f"{strategy}-s{s}"
                                                             for s in results.seeds]
    values = [_get(results.lareqa.get((s, bench), {}), path) for s in systems]
    return [v for v in values if v is not None]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _number(value, decimals: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{decimals}f}"


def _mean_cell(values: list[float], decimals: int = 3) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    if std is None:
        return _number(mean, decimals)
    return f"{_number(mean, decimals)} ± {_number(std, decimals)}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ sections

def missing_results(results: Results) -> list[str]:
    """Expected outputs (from config.json) that are not there, grouped by what they are."""
    out = []
    systems = results.systems
    for bench, label in BENCHMARKS.items():
        absent = [s for s in systems if (s, bench) not in results.lareqa]
        if absent:
            out.append(f"{label} scores: {', '.join(absent)}")
        tags = [f"s{seed}" for seed in results.seeds] + [t for t in [results.pooled_tag] if t]
        absent = [f"hybrid-{tag}-vs-{baseline}-{tag}" for tag in tags
                  for baseline in ("mono", "cross")
                  if (bench, f"hybrid-{tag}", f"{baseline}-{tag}") not in results.significance]
        if absent:
            out.append(f"{label} significance tests: {', '.join(absent)}")
    absent = [f"alpha {a:g}" for a, s in results.alpha_systems().items()
              if (s, "xquad-r") not in results.lareqa]
    if absent:
        out.append(f"alpha sweep (XQuAD-R): {', '.join(absent)}")
    langs = results.config["miracl_langs"].split()
    for system in results.miracl_systems:
        absent = [lang for lang in langs if lang not in results.miracl.get(system, {})]
        if absent:
            out.append(f"MIRACL-mini {system}: " + (
                "all languages" if len(absent) == len(langs) else ", ".join(absent)))
    trained = [s for s in systems[1:] + list(results.alpha_systems().values())
               if s not in results.train_logs]
    if trained:
        out.append(f"training logs: {', '.join(dict.fromkeys(trained))}")
    return out


def _paper_rows(paper: dict, metrics, benches, key_suffix="") -> list[list[str]]:
    rows = []
    for model, by_strategy in paper["models"].items():
        for strategy in STRATEGIES:
            cells = [f"paper {model}", NAMES[strategy], ""]
            for bench in benches:
                numbers = by_strategy[strategy].get(bench, {})
                cells += [_number(numbers.get(m.key), m.decimals) for m in metrics]
            rows.append(cells)
    return rows


def _our_rows(results: Results, metrics, benches) -> list[list[str]]:
    rows = []
    for strategy in ("untrained", *STRATEGIES):
        counts = [len(seed_values(results, strategy, b, metrics[0].path)) for b in benches]
        cells = ["ours", NAMES[strategy], "/".join(map(str, counts))]
        for bench in benches:
            cells += [_mean_cell(seed_values(results, strategy, bench, m.path), m.decimals)
                      for m in metrics]
        rows.append(cells)
    return rows


def lareqa_summary_table(results: Results, paper: dict, metrics) -> str:
    headers = ["model", "batches", "seeds (XQ/ML)"] + [f"{BENCHMARKS[b]} {m.label}"
                                               for b in BENCHMARKS for m in metrics]
    return _table(headers, _paper_rows(paper, metrics, BENCHMARKS)
                  + _our_rows(results, metrics, BENCHMARKS))


def per_language_tables(results: Results, bench: str) -> str:
    train_langs = results.train_langs
    langs = sorted({lang for (s, b), r in results.lareqa.items() if b == bench
                    for lang in r.get("per_language", {})})
    if not langs:
        return f"No {BENCHMARKS[bench]} results yet.\n"
    out = []
    for metric in (*LAREQA_MAP, RANK_DISTANCE):
        sub_path = ("rank_distance",) if metric is RANK_DISTANCE else metric.path
        rows = []
        for lang in langs:
            label = lang if lang in train_langs else f"{lang} (unseen)"
            rows.append([label] + [
                _mean_cell(seed_values(results, s, bench, ("per_language", lang, *sub_path)),
                           metric.decimals) for s in ("untrained", *STRATEGIES)])
        title = ("mean rank distance" if metric is RANK_DISTANCE else f"{metric.label} mAP")
        out.append(f"**{BENCHMARKS[bench]}, {title} by query language**\n\n"
                   + _table(["query language"] + [NAMES[s] for s in ("untrained", *STRATEGIES)],
                            rows))
    return "\n".join(out)


def rank_distance_tables(results: Results, paper: dict) -> str:
    out = [_table(["model", "batches", "seeds (XQ/ML)", "XQuAD-R", "MLQA-R"],
                  _paper_rows(paper, (RANK_DISTANCE,), BENCHMARKS)
                  + _our_rows(results, (RANK_DISTANCE,), BENCHMARKS))]
    paper_per_lang = {s: paper["models"]["XLM-R"][s]["xquad-r"].get(
        "rank_distance_per_language", {}) for s in STRATEGIES}
    langs = sorted(set(paper_per_lang["mono"]) | {
        lang for (s, b), r in results.lareqa.items() if b == "xquad-r"
        for lang in r.get("rank_distance", {}).get("per_language", {})})
    rows = [[lang] + [_number(paper_per_lang[s].get(lang), 1) for s in STRATEGIES]
            + [_mean_cell(seed_values(results, s, "xquad-r",
                                      ("rank_distance", "per_language", lang)), 1)
               for s in ("untrained", *STRATEGIES)] for lang in langs]
    out.append("**XQuAD-R, mean rank distance by query language** (paper: XLM-R)\n\n" + _table(
        ["query language"] + [f"paper {NAMES[s]}" for s in STRATEGIES]
        + [f"ours {NAMES[s]}" for s in ("untrained", *STRATEGIES)], rows))
    return "\n".join(out)


def significance_table(results: Results) -> str:
    if not results.significance:
        return "No significance tests yet.\n"
    metrics = (*LAREQA_MAP, RANK_DISTANCE)
    rows = []
    for (bench, hybrid, baseline), report in sorted(results.significance.items()):
        cells = [BENCHMARKS.get(bench, bench), f"{hybrid} vs {baseline}"]
        for m in metrics:
            entry = _get(report, m.path)
            cells.append("–" if entry is None else
                         f"{entry['difference']:+.{m.decimals}f} (p={entry['p_value']:.4f})")
        rows.append(cells)
    permutations = next(iter(results.significance.values())).get("permutations")
    pooled = (f" Rows named {results.pooled_tag} pool the seeds: Δ is the mean over seeds of "
              "each seed's Δ, and the test flips signs per seed and query (stratified by seed)."
              if results.pooled_tag else "")
    return (f"Paired randomization test over queries ({permutations} permutations); "
            f"Δ = Hybrid − baseline (for rank distance, negative is better).{pooled}\n\n"
            + _table(["benchmark", "systems"] + [f"Δ {m.label}" for m in metrics], rows))


def miracl_tables(results: Results, paper: dict) -> str:
    systems = results.miracl_systems
    present = [s for s in systems if results.miracl.get(s)]
    if not present:
        return "No MIRACL-mini results yet.\n"
    langs = sorted({lang for s in present for lang in results.miracl[s]})
    seen, unseen = _seen_then_unseen(results, langs)
    groups = [("seen in training", seen), ("zero-shot", unseen),
              ("all", langs), ("paper's 15", [lang for lang in langs
                                               if lang in PAPER_MIRACL_LANGS])]
    headers = ["language"] + [NAMES.get(s.rsplit("-s", 1)[0], s) for s in systems]
    out = []
    for key, label in MIRACL_METRICS:
        def value(system, lang):
            return results.miracl.get(system, {}).get(lang, {}).get(key)
        rows = [[f"{lang} ({'seen' if lang in seen else 'zero-shot'})"]
                + [_number(value(s, lang)) for s in systems] for lang in seen + unseen]
        for group, members in groups:
            for name, summary in (("mean", statistics.fmean), ("median", statistics.median)):
                cells = [f"**{name}, {group}** ({len(members)})"]
                for s in systems:
                    values = [value(s, lang) for lang in members]
                    complete = members and all(v is not None for v in values)
                    cells.append(_number(summary(values)) if complete else "–")
                rows.append(cells)
        out.append(f"**MIRACL-mini, {label}** (seed {results.first_seed})\n\n"
                   + _table(headers, rows))
    out.append(_miracl_ties(results, present, langs))
    paper_rows = [[f"paper {model}", NAMES[s]] + [
        _number(paper["models"][model][s]["miracl"].get(k), 4) for k in ("ndcg@10", "recall@100")]
        for model in paper["models"] for s in STRATEGIES]
    out.append("The paper's MIRACL numbers (full MIRACL dev corpus, mean over its 15 languages; "
               "not the same pool as MIRACL-mini, so compare orderings only):\n\n"
               + _table(["model", "batches", "nDCG@10", "Recall@100"], paper_rows))
    return "\n".join(out)


def _seen_then_unseen(results: Results, langs: list[str]) -> tuple[list[str], list[str]]:
    """``langs`` split into those seen in training and the rest, the MIRACL zero-shot
    languages first (order kept within each)."""
    seen = [lang for lang in langs if lang in results.train_langs]
    unseen = [lang for lang in langs if lang not in results.train_langs]
    return seen, sorted(unseen, key=lambda lang: lang not in MIRACL_ZERO_SHOT)


def _miracl_gains(results: Results) -> tuple[dict, int] | None:
    """nDCG@10 of each strategy minus the untrained model's, per language that all four have
    (seen-in-training languages first), and how many are seen; None when there is none."""
    systems = results.miracl_systems
    langs = [lang for lang in sorted(set.intersection(*(set(results.miracl.get(s, {}))
                                                        for s in systems)))
             if all("ndcg@10" in results.miracl[s][lang] for s in systems)]
    if not langs:
        return None
    seen, unseen = _seen_then_unseen(results, langs)
    base = systems[0]
    return {lang: {NAMES[s.rsplit("-s", 1)[0]]: results.miracl[s][lang]["ndcg@10"]
                   - results.miracl[base][lang]["ndcg@10"] for s in systems[1:]}
            for lang in seen + unseen}, len(seen)


def _miracl_ties(results: Results, present: list[str], langs: list[str]) -> str:
    """Where every system has the very same number: such a metric cannot order them there."""
    if len(present) < 2:
        return ""
    lines = []
    for key, label in MIRACL_METRICS:
        complete = [lang for lang in langs
                    if all(key in results.miracl[s].get(lang, {}) for s in present)]
        values = {lang: {results.miracl[s][lang][key] for s in present} for lang in complete}
        equal = [lang for lang in complete if len(values[lang]) == 1]
        if not equal:
            continue
        line = (f"- {label}: the same for all {len(present)} systems in {len(equal)} of "
                f"{len(complete)} languages ({', '.join(equal)})")
        if set().union(*values.values()) == {1.0}:
            line += (": 1.000 everywhere, every judged relevant passage is in every system's "
                     "top 100, so it cannot separate the strategies on this pool")
        lines.append(line + ".")
    return ("Exact ties between the systems (over the languages that every system has):\n\n"
            + "\n".join(lines) + "\n") if lines else ""


# ------------------------------------------------------------------------------ agreement

@dataclass
class Claim:
    text: str                    # e.g. "Hybrid ≥ X-X-mono on XQuAD-R Mo mAP"
    paper: dict                  # model -> bool
    ours: bool | None            # None: not measured yet
    detail: str
    tie: bool = False            # ours exactly equal (e.g. both at a metric's ceiling)

    @property
    def verdict(self) -> str:
        if self.ours is None:
            return "not measured yet"
        if self.tie:
            return "tie in ours"
        votes = set(self.paper.values())
        if len(votes) > 1:
            return "paper mixed"
        return "agrees" if votes == {self.ours} else "disagrees"


def _holds(hybrid: float, baseline: float, higher_is_better: bool) -> bool:
    return hybrid >= baseline if higher_is_better else hybrid <= baseline


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def ordering_claims(results: Results, paper: dict) -> list[Claim]:
    """'Hybrid is at least as good as each baseline' on every headline number, in the paper
    (each of its models) and in our runs (means over seeds; the p-value of each seed's test)."""
    claims = []
    for bench, bench_label in BENCHMARKS.items():
        for metric in (*LAREQA_MAP, RANK_DISTANCE):
            ours_hybrid = mean_std(seed_values(results, "hybrid", bench, metric.path))[0]
            for baseline in ("mono", "cross"):
                sign = "≥" if metric.higher_is_better else "≤"
                what = "mAP" if metric in LAREQA_MAP else ""
                text = (f"Hybrid {sign} {NAMES[baseline]} on {bench_label} "
                        f"{metric.label} {what}".rstrip())
                paper_holds = {model: _holds(v["hybrid"][bench][metric.key],
                                             v[baseline][bench][metric.key],
                                             metric.higher_is_better)
                               for model, v in paper["models"].items()}
                ours_base = mean_std(seed_values(results, baseline, bench, metric.path))[0]
                ours = (None if ours_hybrid is None or ours_base is None
                        else _holds(ours_hybrid, ours_base, metric.higher_is_better))
                tests = {seed: _get(results.significance.get(
                    (bench, f"hybrid-s{seed}", f"{baseline}-s{seed}"), {}), metric.path)
                    for seed in results.seeds}
                tests = {seed: test for seed, test in tests.items() if test}
                p_values = ", ".join(f"{test['p_value']:.4f}" for test in tests.values())
                tag = results.pooled_tag
                pooled = _get(results.significance.get(
                    (bench, f"hybrid-{tag}", f"{baseline}-{tag}"), {}), metric.path)
                detail = (f"ours {_number(ours_hybrid, metric.decimals)} vs "
                          f"{_number(ours_base, metric.decimals)}"
                          + (f", p={pooled['p_value']:.4f} (seeds pooled)" if pooled else "")
                          + (f", p={p_values} (seed{'s' if len(tests) > 1 else ''} "
                             f"{', '.join(tests)})" if tests else ""))
                claims.append(Claim(text, paper_holds, ours, detail,
                                    tie=ours is not None and ours_hybrid == ours_base))
    systems = {s: f"{s}-s{results.first_seed}" for s in STRATEGIES}
    for key, label in (("ndcg@10", "nDCG@10"), ("recall@100", "Recall@100")):
        for baseline in ("mono", "cross"):
            pair = (systems["hybrid"], systems[baseline])
            langs = [lang for lang in PAPER_MIRACL_LANGS
                     if all(key in results.miracl.get(s, {}).get(lang, {}) for s in pair)]
            hybrid, base = (statistics.fmean(results.miracl[s][lang][key] for lang in langs)
                            if langs else None for s in pair)
            paper_holds = {model: v["hybrid"]["miracl"][key] >= v[baseline]["miracl"][key]
                           for model, v in paper["models"].items()}
            ours = None if hybrid is None else hybrid >= base
            claims.append(Claim(
                f"Hybrid ≥ {NAMES[baseline]} on MIRACL {label} (ours: MIRACL-mini)",
                paper_holds, ours, f"ours {_number(hybrid)} vs {_number(base)}, mean over "
                f"{len(langs)} of the paper's 15 languages",
                tie=ours is not None and hybrid == base))
    return claims


def claims_section(claims: list[Claim]) -> str:
    rows = [[c.text, ", ".join(f"{m} {_yes(v)}" for m, v in c.paper.items()),
             "–" if c.ours is None else "tie" if c.tie else _yes(c.ours), c.detail,
             f"**{c.verdict}**"] for c in claims]
    measured = [c for c in claims if c.verdict in ("agrees", "disagrees")]
    agreeing = sum(c.verdict == "agrees" for c in measured)
    ties = sum(c.tie for c in claims if c.ours is not None and len(set(c.paper.values())) == 1)
    summary = (f"Of {len(measured)} orderings that are measured and unanimous in the paper, "
               f"ours agrees on {agreeing} and disagrees on {len(measured) - agreeing}."
               + (f" On {ties} more our two numbers are exactly equal (a tie: no ordering to "
                  "compare)." if ties else ""))
    return summary + "\n\n" + _table(["statement", "paper", "ours", "numbers", "verdict"], rows)


# ------------------------------------------------------------------------------------ figures

def draw_figures(results: Results, figures: Path) -> dict[str, str]:
    """All pictures; returns {caption: file name} for the ones drawn."""
    drawn = {}
    for bench, label in BENCHMARKS.items():
        systems = [f"{s}-s{results.first_seed}" for s in STRATEGIES]
        matrices = {s: results.lareqa[(s, bench)]["matrix"] for s in systems
                    if (s, bench) in results.lareqa}
        if not matrices:
            continue
        values = [v for m in matrices.values() for row in m.values() for v in row.values()]
        for system, matrix in matrices.items():
            name = f"heatmap-{bench}-{system}.png"
            strategy = NAMES[system.rsplit("-s", 1)[0]]
            plots.language_heatmap(matrix, figures / name,
                                   f"{label}, {strategy} (seed {results.first_seed}): mAP, "
                                   "query language x candidate language",
                                   vmin=min(values), vmax=max(values))
            drawn[f"{label} mAP matrix, {strategy}"] = name
    curves = {s: results.train_logs[s] for s in sorted(results.train_logs)
              if s.rsplit("-s", 1)[0] in STRATEGIES}
    if curves:
        plots.loss_curves(curves, figures / "loss-curves.png",
                          "training loss (faint: per step; bold: moving average of 5)")
        drawn["Training loss of every strategy and seed"] = "loss-curves.png"
    gains = _miracl_gains(results)
    if gains:
        values, seen = gains
        plots.grouped_bars(values, figures / "miracl-mini-ndcg-change.png",
                           f"MIRACL-mini: nDCG@10 change from the untrained model (seed "
                           f"{results.first_seed})", "nDCG@10 change",
                           "language (left of the dashed line: seen in training; right: "
                           "zero-shot)", divider_after=seen)
        drawn["MIRACL-mini nDCG@10 change from the untrained model, per language"] = \
            "miracl-mini-ndcg-change.png"
    sweep = {}
    for alpha, system in results.alpha_systems().items():
        report = results.lareqa.get((system, "xquad-r"))
        if report:
            sweep[alpha] = {f"{m.label} mAP": _get(report, m.path) for m in LAREQA_MAP}
            sweep[alpha]["rank distance"] = report["rank_distance"]["mean"]
    if len(sweep) >= 2:
        plots.alpha_sweep(sweep, figures / "alpha-sweep.png",
                          f"XQuAD-R vs alpha (seed {results.first_seed}; 0 = all X-Y, "
                          "1 = all X-X-mono batches)")
        drawn["α sweep on XQuAD-R"] = "alpha-sweep.png"
    return drawn


def alpha_table(results: Results) -> str:
    rows = []
    for alpha, system in sorted(results.alpha_systems().items()):
        report = results.lareqa.get((system, "xquad-r"), {})
        rows.append([f"{alpha:g}", system] + [_number(_get(report, m.path), m.decimals)
                                              for m in (*LAREQA_MAP, RANK_DISTANCE)])
    return _table(["α", "run", "Mo mAP", "Cr mAP", "Mul mAP", "rank distance"], rows)


def _work_units(results: Results) -> dict[str, dict]:
    """``(wall seconds, CPU seconds or None)`` of each unit of work in timings.jsonl, by kind: a
    training, one system's evaluation on a LAReQA benchmark (encode both sides + score), a
    significance test, one system's MIRACL-mini language (encode, index, search, score). A unit
    counts once its last command (train, score, compare) is there: one still running would look
    cheap. CPU seconds (recorded since 2026-11-26) are None unless every command has them."""
    units: dict[str, dict] = {}
    finished: set = set()
    for row in results.timings:
        action, _, rest = row["step"].partition("-")
        if action == "encode":
            rest = rest.removeprefix("queries-").removeprefix("corpus-")
        if action == "train":
            kind, unit = "training", rest
        elif "-miracl-mini-" in rest and action in ("encode", "index", "search", "score"):
            kind, unit = "MIRACL-mini (system x language)", tuple(rest.split("-miracl-mini-"))
        else:
            bench = next((b for b in BENCHMARKS if rest.endswith(f"-{b}")), None)
            if bench is None or action not in ("encode", "score", "compare"):
                continue  # data preparation, batches: seconds at most
            kind = (f"{BENCHMARKS[bench]} significance test" if action == "compare"
                    else f"{BENCHMARKS[bench]} evaluation")
            unit = rest.removesuffix(f"-{bench}")
        by_unit = units.setdefault(kind, {})
        wall, cpu = by_unit.get(unit, (0.0, 0.0))
        row_cpu = row.get("cpu_seconds")
        by_unit[unit] = (wall + row["seconds"],
                         None if cpu is None or row_cpu is None else cpu + row_cpu)
        if action in ("train", "score", "compare"):
            finished.add((kind, unit))
    return {kind: {unit: times for unit, times in by_unit.items()
                   if (kind, unit) in finished} for kind, by_unit in units.items()}


def _expected_units(results: Results) -> dict[str, int]:
    """How many units of each kind the protocol in config.json needs."""
    systems = len(results.systems)  # the untrained model and the trained ones
    extra_alphas = sum(1 for s in results.alpha_systems().values() if s.startswith("hybrid-a"))
    expected = {"training": systems - 1 + extra_alphas}
    for bench, label in BENCHMARKS.items():
        expected[f"{label} evaluation"] = systems + (extra_alphas if bench == "xquad-r" else 0)
        expected[f"{label} significance test"] = 2 * len(results.seeds) + (
            2 if results.pooled_tag else 0)
    expected["MIRACL-mini (system x language)"] = len(results.miracl_systems) * len(
        results.config["miracl_langs"].split())
    return expected


def timing_table(results: Results) -> str:
    """Measured wall time by kind of work, and the whole protocol projected from the median
    unit of each kind; CPU time where it was recorded."""
    if not results.timings:
        return "No timings recorded yet.\n"
    units = _work_units(results)
    rows, measured, projected, unknown = [], 0.0, 0.0, []
    for kind, count in _expected_units(results).items():
        times = list(units.get(kind, {}).values())
        seconds = [wall for wall, _ in times]
        cpu = [cpu for _, cpu in times if cpu is not None]
        cpu_text = f"{sum(cpu) / 60:.1f} ({len(cpu)})" if cpu else "–"
        measured += sum(seconds)
        if not seconds:
            unknown.append(kind)
            rows.append([kind, str(count), "0", "–", cpu_text, "–", "–"])
            continue
        median = statistics.median(seconds)
        projected += median * count
        rows.append([kind, str(count), str(len(seconds)), f"{sum(seconds) / 60:.1f}", cpu_text,
                     f"{median / 60:.1f}", f"{median * count / 60:.0f}"])
    rows.append(["**total**", "", "", f"**{measured / 60:.0f}**", "", "",
                 f"**{projected / 60:.0f}**" + (" + unmeasured kinds" if unknown else "")])
    return ("Measured: the wall time of every command `reproduce_paper.sh` ran (runs that "
            "shared the machine with other jobs, or were paused, took longer), and where it "
            "was recorded, the CPU time (user + system; on 2 cores an unshared command takes "
            "about half its CPU time in wall time). Projected: the median unit of each kind "
            "times the number of units the protocol needs.\n\n"
            + _table(["work", "units in the protocol", "units timed", "minutes measured",
                      "CPU minutes measured (units)", "median minutes per unit",
                      "projected minutes, whole protocol"], rows))


# ------------------------------------------------------------------------------------ report

def render_report(results: Results, paper: dict, figures: Path, figures_link: str) -> str:
    """The whole markdown document; pictures are written into ``figures`` and linked as
    ``figures_link/NAME``."""
    c = results.config
    smoke = bool(c.get("smoke"))
    parts = []
    if smoke:
        parts.append("# SMOKE run — not results\n\nThese numbers come from `SMOKE=1 "
                     "examples/reproduce_paper.sh` (a few training steps on tiny data): they "
                     "test the pipeline and mean nothing about the method.\n")
    else:
        parts.append("# Reproduction of hybrid batch training (arXiv 2408.10536)\n")
    parts.append(
        f"Generated by `examples/make_report.py` from `{results.root}` (every number is read "
        f"from the JSON outputs of `examples/reproduce_paper.sh`). Paper numbers: "
        f"{paper['source']}.\n\n"
        f"Setup: model `{c.get('model', '?')}`, {c.get('steps', '?')} steps of batch "
        f"{c.get('batch', '?')} (the paper: batch 100 on an A100; smaller here to fit 2 CPU "
        f"cores), warm-up {c.get('warmup_steps', '?')}, seeds {' '.join(results.seeds)}, training on "
        f"XQuAD-R articles {c.get('train_articles', '?')} in {c['train_langs']} "
        f"(el and vi unseen); XQuAD-R evaluated on articles {c.get('xquad_articles', '?')}, "
        f"MLQA-R (never trained on) on articles {c.get('mlqa_articles', '?')}; candidates "
        f"encoded as `{c.get('candidate_fields', 'lareqa')}`; commit {c.get('commit', '?')}. "
        "The paper trained XLM-R and LaBSE on in-house translated data, so compare orderings, "
        "not absolute numbers.\n")
    missing = missing_results(results)
    parts.append("## Missing results\n\n" + ("\n".join(f"- {m}" for m in missing) + "\n"
                                              if missing else "None: every expected output is "
                                                              "present.\n"))
    parts.append("## Does our ordering agree with the paper's?\n\n"
                 + claims_section(ordering_claims(results, paper)))
    parts.append("## mAP (Table 1 style)\n\nMacro-averaged over settings; ours: mean ± std over "
                 "seeds (seeds: how many on XQuAD-R / MLQA-R).\n\n"
                 + lareqa_summary_table(results, paper, LAREQA_MAP))
    parts.append("## Recall (R@1 mono / cross, R@10 multi)\n\n"
                 + lareqa_summary_table(results, paper, LAREQA_RECALL))
    parts.append("## Language bias: rank distance (Table 2 style, lower is better)\n\n"
                 + rank_distance_tables(results, paper))
    parts.append("## Significance: Hybrid vs each baseline\n\n" + significance_table(results))
    parts.append("## MIRACL-mini (monolingual; seen vs zero-shot languages)\n\n"
                 "MIRACL-mini is a pooled subset of MIRACL dev (the judged passages of 966 "
                 "queries among ~81k passages), not MIRACL.\n\n" + miracl_tables(results, paper))
    parts.append("## α sweep (XQuAD-R)\n\n" + alpha_table(results))
    for bench in BENCHMARKS:
        parts.append(f"## Per language: {BENCHMARKS[bench]}\n\n"
                     + per_language_tables(results, bench))
    drawn = draw_figures(results, figures)
    parts.append("## Figures\n\n" + ("".join(f"**{caption}**\n\n![{caption}]"
                                             f"({figures_link}/{name})\n\n"
                                             for caption, name in drawn.items())
                                     or "No figures yet.\n"))
    parts.append("## Wall time\n\n" + timing_table(results))
    return "\n".join(parts)


def write_report(results_dir: str | os.PathLike, paper_file: str | os.PathLike,
                 output: str | os.PathLike) -> list[str]:
    """Render the report of ``results_dir`` into ``output`` (figures beside it, in
    ``figures/``); returns the list of missing results."""
    output = Path(output)
    results = load_results(results_dir)
    paper = json.loads(Path(paper_file).read_text())
    text = render_report(results, paper, output.parent / "figures", "figures")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_text(text)
    os.replace(partial, output)
    return missing_results(results)
