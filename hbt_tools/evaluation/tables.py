"""Readable plain-text tables for ``hbt-score --format table``."""
from __future__ import annotations

from typing import Sequence


def format_table(title: str, headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A left-aligned first column, right-aligned numbers; floats to 4 decimals."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values):
        first = str(values[0]).ljust(widths[0])
        return "  ".join([first] + [str(v).rjust(w) for v, w in zip(values[1:], widths[1:])])

    rule = "-" * len(line(headers))
    return "\n".join([title, line(headers), rule, *(line(r) for r in cells)]) + "\n"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.4f}"
    return str(value)


def run_tables(results: dict[str, dict]) -> str:
    """results: run name -> its JSON object (``metrics``, ``queries``, maybe ``by_lang``)."""
    labels = list(next(iter(results.values()))["metrics"])
    out = [format_table("Scores (mean over evaluated queries)", ["run", "queries", *labels],
                        [[name, r["queries"], *r["metrics"].values()]
                         for name, r in results.items()])]
    for name, r in results.items():
        if "by_lang" in r:
            out.append(format_table(f"By query language: {name}", ["lang", "queries", *labels],
                                    [[lang, v["queries"], *v["metrics"].values()]
                                     for lang, v in r["by_lang"].items()]))
    return "\n".join(out)


def lareqa_tables(report: dict) -> str:
    out = [format_table(
        f"LAReQA protocol: {report['queries']} queries, {report['candidates']} candidates "
        f"(settings macro-averaged; mono/cross/multi = "
        f"{report['mono']['settings']}/{report['cross']['settings']}/"
        f"{report['multi']['settings']} settings)",
        ["", "Mo mAP", "Cr mAP", "Mul mAP", "Mo R@1", "Cr R@1", "Mul R@10", "rank dist."],
        [["all", report["mono"].get("map"), report["cross"].get("map"),
          report["multi"]["map"], report["mono"].get("r@1"), report["cross"].get("r@1"),
          report["multi"]["r@10"], report["rank_distance"]["mean"]]])]
    rows = []
    for lang, v in report["per_language"].items():
        mono, cross = v.get("mono", {}), v.get("cross", {})
        rows.append([lang, mono.get("map"), cross.get("map"), v["multi"]["map"],
                     mono.get("r@1"), cross.get("r@1"), v["multi"]["r@10"], v["rank_distance"]])
    out.append(format_table("Per query language", ["lang", "Mo mAP", "Cr mAP", "Mul mAP",
                                                   "Mo R@1", "Cr R@1", "Mul R@10",
                                                   "rank dist."], rows))
    out.append(_matrix_table("mAP by query language (rows) x candidate language (columns)",
                             report["matrix"], lambda v: v))
    return "\n".join(out)


def _matrix_table(title: str, matrix: dict, cell) -> str:
    columns = sorted({y for row in matrix.values() for y in row})
    return format_table(title, ["", *columns],
                        [[x, *(cell(row[y]) if y in row else None for y in columns)]
                         for x, row in matrix.items()])


def compare_run_table(report: dict) -> str:
    return format_table(
        f"Paired randomization test ({report['permutations']} permutations, seed "
        f"{report['seed']}, {report['queries']} queries): A = {report['compare']['a']}, "
        f"B = {report['compare']['b']}",
        ["metric", "A", "B", "B - A", "p"],
        [[m, v["a"], v["b"], v["difference"], v["p_value"]] for m, v in report["metrics"].items()])


def compare_lareqa_tables(report: dict) -> str:
    rows = []
    for setting, metrics in (("mono", ("map", "r@1")), ("cross", ("map", "r@1")),
                             ("multi", ("map", "r@10")), ("rank_distance", ("mean",))):
        for metric in metrics:
            if metric in report.get(setting, {}):
                v = report[setting][metric]
                rows.append([f"{setting} {metric}", v["a"], v["b"], v["difference"],
                             v["p_value"]])
    pooled = f", means over {report['pairs']} A/B pairs" if "pairs" in report else ""
    out = [format_table(f"Paired randomization test ({report['permutations']} permutations, "
                        f"seed {report['seed']}{pooled})", ["", "A", "B", "B - A", "p"], rows)]
    out.append(_matrix_table("mAP difference B - A (p-value) by query x candidate language",
                             report["matrix"],
                             lambda v: f"{v['difference']:+.4f} ({v['p_value']:.3f})"))
    return "\n".join(out)
