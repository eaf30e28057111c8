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
