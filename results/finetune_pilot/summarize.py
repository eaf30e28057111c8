"""Summarize the fine-tuning pilot (pilot.sh) from its logs: every grid point's dev curve (pilot_curves.csv,
pilot_curves.png), and per (model, task) the point each candidate grid selects, its test score and whether it
converged by the study's rule (pilot_selection.csv).

    python results/finetune_pilot/summarize.py        # reads results/finetune_pilot/pilot_logs.tgz
"""

import csv
import io
import re
import tarfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from meta_xlm.tasks.finetuning import convergence  # noqa: E402

HERE = Path(__file__).resolve().parent
GRIDS = {"full 2x3": lambda point: True, "chosen: batch {16,32} x lr 1e-3": lambda point: point.endswith("lr0.001")}


def read_logs() -> dict[str, str]:
    with tarfile.open(HERE / "pilot_logs.tgz") as archive:
        return {m.name[:-4]: archive.extractfile(m).read().decode() for m in archive.getmembers() if m.isfile()}


def dev_curves(log: str) -> dict[str, list[float]]:
    """Grid point -> dev score per epoch, in the order the recipe trained them (each point logs its epochs)."""
    scores = [float(value) for value in re.findall(r"'eval_score': '([0-9.]+)'", log)]
    points = re.findall(r"finetuning: (bs\d+_lr[0-9.e-]+): best dev", log)
    epochs = len(scores) // len(points)
    return {point: scores[i * epochs : (i + 1) * epochs] for i, point in enumerate(points)}


def main() -> None:
    logs = read_logs()
    curves = {cell: dev_curves(log) for cell, log in sorted(logs.items())}
    with (HERE / "pilot_curves.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cell", "grid_point", "epoch", "dev_score"])
        for cell, points in curves.items():
            for point, scores in points.items():
                writer.writerows([cell, point, epoch, score] for epoch, score in enumerate(scores, 1))
    selection = []
    for cell, points in curves.items():
        test = re.search(r"finetune: \w+ \w+ \w+: \{'sw': ([0-9.]+)\}", logs[cell]).group(1)
        for grid, keep in GRIDS.items():
            kept = {point: scores for point, scores in points.items() if keep(point)}
            best = max(kept, key=lambda point: max(kept[point]))
            selection.append({"cell": cell, "grid": grid, "selected": best, "dev": max(kept[best]),
                              "test_of_full_grid_selection": test if grid == "full 2x3" else "",
                              **convergence(kept[best])})
            selection[-1]["gain_last_two_epochs"] = round(selection[-1]["gain_last_two_epochs"], 2)
    with (HERE / "pilot_selection.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(selection[0]))
        writer.writeheader()
        writer.writerows(selection)
    figure, axes = plt.subplots(2, 5, figsize=(20, 7), sharex=False)
    for axis, (cell, points) in zip(axes.flat, curves.items()):
        for point, scores in points.items():
            axis.plot(range(1, len(scores) + 1), scores, label=point, lw=2 if point.endswith("lr0.001") else 1)
        axis.set_title(cell, fontsize=9)
        axis.set_xlabel("epoch")
    axes.flat[0].set_ylabel("dev score (F1)")
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(HERE / "pilot_curves.png", dpi=80)


if __name__ == "__main__":
    main()
