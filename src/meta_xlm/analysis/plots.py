"""The paper's analysis figures as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _save(figure, path: str | Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return Path(path)


def plot_gradient_conflict(rows: Sequence[Mapping], path: str | Path, segment: str = "all") -> Path:
    """Fig. 3: gradient cosine similarity over training steps, one line per language pair."""
    series = defaultdict(list)
    for row in rows:
        if row["segment"] == segment:
            series[row["pair"]].append((int(row["step"]), float(row["cosine"])))
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for pair, points in sorted(series.items()):
        points.sort()
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=pair)
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set(
        xlabel="training step", ylabel="gradient cosine similarity", title=f"Gradient similarity ({segment})"
    )
    axis.legend()
    return _save(figure, path)


def plot_mask_similarity(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Fig. 4a: similarity of mask parameters π per layer (left: cosine, the paper's measure; right: centred
    cosine); solid = attention, dashed = feed-forward, one colour per pair of runs."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, metric in zip(axes, ("cosine", "centered_cosine")):
        series = defaultdict(list)
        for row in rows:
            if row["layer"] != "all":
                series[(row["pair"], row["sublayer"])].append((int(row["layer"]), float(row[metric])))
        colors = {}
        for (pair, sublayer), points in sorted(series.items()):
            points.sort()
            color = colors.setdefault(pair, f"C{len(colors)}")
            style = "-" if sublayer == "attention" else "--"
            axis.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                style,
                color=color,
                marker="o",
                label=f"{pair} {sublayer}",
            )
        axis.set(
            xlabel="layer",
            ylabel=f"{metric.replace('_', ' ')} of π",
            title=f"Parameter similarity ({metric.replace('_', ' ')})",
        )
        axis.set_xticks(sorted({layer for points in series.values() for layer, _ in points}))
        axis.legend(fontsize=7)
    return _save(figure, path)


def plot_extreme_groups(rows: Sequence[Mapping], language: str, other: str, path: str | Path) -> Path:
    """Fig. 4b: normalised π of the most negative (left) and most positive (right) groups of `language`,
    with `other`'s π for the same groups beside them."""
    figure, axis = plt.subplots(figsize=(max(6, 0.35 * len(rows)), 3.8))
    positions = range(len(rows))
    width = 0.4
    axis.bar([p - width / 2 for p in positions], [r["pi"] for r in rows], width, label=language)
    axis.bar([p + width / 2 for p in positions], [r["pi_other"] for r in rows], width, label=other)
    axis.set_xticks(list(positions), [r["group"] for r in rows], rotation=70, fontsize=7)
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set(ylabel="normalised π", title=f"Groups with the most extreme π for {language}")
    axis.legend()
    return _save(figure, path)


def plot_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    title: str,
    ylabel: str,
    log_y: bool = False,
) -> Path:
    """One line per named curve of (step, value) points (Fig. 2 perplexity, Fig. 4c training loss)."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for name, points in curves.items():
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=name)
    if log_y:
        axis.set_yscale("log")
    axis.set(xlabel="training step", ylabel=ylabel, title=title)
    axis.legend()
    return _save(figure, path)


__all__ = ["plot_curves", "plot_extreme_groups", "plot_gradient_conflict", "plot_mask_similarity"]


def mean_matrix(rows: Sequence[Mapping], segment: str) -> dict[tuple[str, str], float]:
    """{(language_a, language_b): mean cosine over the rows (e.g. checkpoints, seeds)} of one segment."""
    values = defaultdict(list)
    for row in rows:
        if row["segment"] == segment:
            values[(row["language_a"], row["language_b"])].append(float(row["cosine"]))
    return {pair: sum(found) / len(found) for pair, found in values.items()}


def plot_conflict_matrix(
    rows: Sequence[Mapping], languages: Sequence[str], reference: str, path: str | Path, segments: Sequence[str]
) -> Path:
    """The languages × languages gradient-cosine matrix (mean over the rows' checkpoints), one heatmap per segment
    (whole model, each layer); each panel's title gives the En-En baseline (`reference` against its second batch,
    row (reference, reference + "#2")). Colours are centred on 0 and scaled to the largest off-diagonal value,
    so the diagonal's 1 does not wash the pairs out."""
    figure, axes = plt.subplots(1, len(segments), figsize=(4.2 * len(segments), 4), squeeze=False)
    for axis, segment in zip(axes[0], segments):
        cells = mean_matrix(rows, segment)
        grid = [[cells.get((a, b), float("nan")) for b in languages] for a in languages]
        off_diagonal = [abs(v) for i, line in enumerate(grid) for j, v in enumerate(line) if i != j and v == v]
        scale = max(off_diagonal, default=1.0) or 1.0
        image = axis.imshow(grid, cmap="RdBu", vmin=-scale, vmax=scale)
        for i, line in enumerate(grid):
            for j, value in enumerate(line):
                axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
        axis.set_xticks(range(len(languages)), languages)
        axis.set_yticks(range(len(languages)), languages)
        baseline = cells.get((reference, f"{reference}#2"), float("nan"))
        axis.set_title(f"{segment} ({reference}-{reference} baseline {baseline:.2f})", fontsize=9)
        figure.colorbar(image, ax=axis, fraction=0.046)
    return _save(figure, path)


def plot_conflict_scatter(points: Sequence[Mapping], path: str | Path) -> Path:
    """Claim 2 of the seven-language study: en-X gradient cosine (x) against X's within-language drop (y, with
    its standard error), one marker per task, each point labelled with its language."""
    figure, axis = plt.subplots(figsize=(5, 3.8))
    for index, task in enumerate(dict.fromkeys(point["task"] for point in points)):
        mine = [point for point in points if point["task"] == task]
        axis.errorbar([p["en-X cosine"] for p in mine], [p["drop"] for p in mine],
                      yerr=[p["drop spread"] or 0.0 for p in mine], fmt="os^D"[index % 4], label=task, capsize=3)  # fmt: skip
        for point in mine:
            axis.annotate(point["language"], (point["en-X cosine"], point["drop"]), textcoords="offset points", xytext=(4, 4))
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set(xlabel="All-7 mean en-X gradient cosine", ylabel="within-language drop (F1 points)",
             title="Does conflict predict loss?")  # fmt: skip
    axis.legend()
    return _save(figure, path)
