"""Pilot downstream table: POS sw within-language F1 / accuracy of every fine-tuning run under the given folders,
one row per run (pilot_downstream.csv), then mean ± sd over fine-tuning seeds per (model, training sentences).

    python results/pilot/downstream.py runs/pilot5 runs/pilot6
"""

import csv
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"pos_sw_(?P<examples>\d+)_(?P<model>.+)_seed(?P<seed>\d+)$")

rows = []
for root in sys.argv[1:]:
    for metrics in sorted(Path(root).glob("pos_sw_*/metrics.json")):
        match = NAME.match(metrics.parent.name)
        if match is None:
            raise ValueError(f"{metrics.parent}: expected a folder named pos_sw_<examples>_<model>_seed<n>")
        record = json.loads(metrics.read_text())
        rows.append({
            "model": match["model"], "max_train_examples": int(match["examples"]),
            "train_examples": record["data"]["train"]["examples"], "seed": int(match["seed"]),
            "f1": round(record["avg"]["f1"], 2), "accuracy": round(record["avg"]["accuracy"], 2),
        })
with (Path(__file__).parent / "pilot_downstream.csv").open("w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
groups = defaultdict(list)
for row in rows:
    groups[(row["train_examples"], row["model"])].append(row)
print("| training sentences | model | seeds | POS F1 | word accuracy |\n|---|---|---|---|---|")
for (examples, model), runs in sorted(groups.items()):
    cells = []
    for metric in ("f1", "accuracy"):
        values = [run[metric] for run in runs]
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
    print(f"| {examples} | {model} | {len(runs)} | {cells[0]} | {cells[1]} |")
