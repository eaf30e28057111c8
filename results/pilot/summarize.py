"""Pilot table: validation perplexity and training loss of each pilot run at each evaluation step.

    PYTHONPATH=src python results/pilot/summarize.py runs/pilot/lr1e-3_wu500 runs/study/small_en_sw/pretrain/joint_pair/seed0
"""

import csv
import sys
from pathlib import Path

from meta_xlm.analysis.report import loss_curve, perplexity_curve, read_log_history

rows = []
for run in sys.argv[1:]:
    history = read_log_history(run)
    losses = dict(loss_curve(history))
    ppl = {language: dict(perplexity_curve(history, language)) for language in ("en", "sw")}
    for step in sorted(set(ppl["en"]) | set(ppl["sw"])):
        rows.append({"run": run, "step": step, "train_loss": losses.get(step, ""),
                     "val_ppl_en": round(ppl["en"].get(step, float("nan")), 1),
                     "val_ppl_sw": round(ppl["sw"].get(step, float("nan")), 1)})
with (Path(__file__).parent / "pilot.csv").open("w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
for row in rows:
    print(row)
