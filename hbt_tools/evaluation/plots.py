"""Pictures of evaluation results (PNG, matplotlib's Agg backend; ``pip install hbt-tools[plot]``).

matplotlib is imported only when a picture is drawn, so the rest of the toolkit does not need it.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("pictures need matplotlib: pip install 'hbt-tools[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str | os.PathLike) -> None:
    """Write the PNG under a temporary name, then rename (never a half-written picture)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = path + ".partial.png"
    fig.savefig(partial, dpi=110, bbox_inches="tight")
    os.replace(partial, path)


def language_heatmap(matrix: Mapping[str, Mapping[str, float]], path: str | os.PathLike,
                     title: str = "mAP by query language x candidate language",
                     vmin: float | None = None, vmax: float | None = None) -> None:
    """Draw a query-language (rows) x candidate-language (columns) matrix, e.g. the ``matrix``
    of ``hbt-score --protocol lareqa``, as a PNG heat-map with each cell's value written in it.
    Give the same vmin / vmax to pictures that are meant to be compared."""
    plt = _pyplot()
    rows = list(matrix)
    columns = sorted({y for row in matrix.values() for y in row})
    values = [[matrix[x].get(y, float("nan")) for y in columns] for x in rows]
    fig, ax = plt.subplots(figsize=(0.55 * len(columns) + 2.2, 0.45 * len(rows) + 1.6))
    image = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("candidate language")
    ax.set_ylabel("query language")
    ax.set_title(title, fontsize=10)
    low, high = image.get_clim()
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if value == value:  # not NaN
                dark = value < low + 0.6 * (high - low)
                text = f"{value:.2f}"
                ax.text(j, i, text[1:] if text.startswith("0.") else text,
                        ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    _save(fig, path)
    plt.close(fig)


def loss_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path: str | os.PathLike,
                title: str = "training loss", smooth: int = 5) -> None:
    """One line per run: (step, loss) points, drawn raw (faint) and as a trailing moving
    average over ``smooth`` steps. Runs named alike except for a seed suffix share a colour;
    the seeds of a family differ in line style."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    colours: dict[str, str] = {}
    seeds_seen: dict[str, int] = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for name, points in curves.items():
        if not points:
            continue
        family = name.rsplit("-s", 1)[0]
        colour = colours.setdefault(family, palette[len(colours) % len(palette)])
        style = styles[seeds_seen.get(family, 0) % len(styles)]
        seeds_seen[family] = seeds_seen.get(family, 0) + 1
        steps = [s for s, _ in points]
        losses = [v for _, v in points]
        window = max(1, min(smooth, len(losses)))
        averaged = [sum(losses[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1))
                    for i in range(len(losses))]
        ax.plot(steps, losses, color=colour, alpha=0.2, linewidth=0.8)
        ax.plot(steps, averaged, color=colour, linestyle=style, linewidth=1.4, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
    plt.close(fig)


def alpha_sweep(points: Mapping[float, Mapping[str, float]], path: str | os.PathLike,
                title: str = "alpha sweep") -> None:
    """points: alpha -> {"Mo mAP": ..., "Cr mAP": ..., "Mul mAP": ..., "rank distance": ...}.
    mAP lines on the left axis, rank distance (if given) on a right axis."""
    plt = _pyplot()
    alphas = sorted(points)
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [k for k in next(iter(points.values())) if k != "rank distance"]
    for label in labels:
        ax.plot(alphas, [points[a].get(label, float("nan")) for a in alphas], marker="o",
                label=label)
    ax.set_xlabel("alpha (probability of a monolingual batch)")
    ax.set_ylabel("mAP")
    ax.set_xticks(alphas)
    handles, names = ax.get_legend_handles_labels()
    if any("rank distance" in points[a] for a in alphas):
        right = ax.twinx()
        line, = right.plot(alphas, [points[a].get("rank distance", float("nan")) for a in alphas],
                           marker="s", linestyle="--", color="grey")
        right.set_ylabel("mean rank distance (lower is better)")
        handles.append(line)
        names.append("rank distance")
    ax.legend(handles, names, fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    _save(fig, path)
    plt.close(fig)


def grouped_bars(values: Mapping[str, Mapping[str, float]], path: str | os.PathLike,
                 title: str, ylabel: str, xlabel: str = "",
                 divider_after: int | None = None) -> None:
    """One group of bars per row of ``values`` (e.g. a language), one bar per column (e.g. a
    system), in the given order; a dashed line after the first ``divider_after`` groups
    separates two kinds of rows (e.g. seen vs zero-shot languages)."""
    plt = _pyplot()
    groups = list(values)
    series = list(dict.fromkeys(k for row in values.values() for k in row))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(groups) * len(series) / 2 + 2), 4))
    for i, name in enumerate(series):
        offsets = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(offsets, [values[g].get(name, float("nan")) for g in groups], width, label=name)
    ax.axhline(0, color="black", linewidth=0.6)
    if divider_after is not None and 0 < divider_after < len(groups):
        ax.axvline(divider_after - 0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
