"""Interference report (paper Section 3.3): Mono vs multilingual within-language scores, validation perplexity
over pretraining (Fig. 2) and early training loss of JointPair / +adpt / +meta adpt (Fig. 4c).

Inputs
- Fine-tuning metrics records, as recipes/finetune.py writes them, read with
  `meta_xlm.tasks.records.load_metrics_records` (the format is in that module's docstring).
- Pretraining runs: an output_dir of recipes/pretrain.py. Its Trainer `log_history` is read from
  <run>/trainer_state.json, else from the newest checkpoint-N/trainer_state.json: entries with "loss" (training)
  and "eval_<lang>_loss" / "eval_<lang>_perplexity" (validation, per language).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from meta_xlm.analysis.plots import plot_curves
from meta_xlm.data import bits_per_character
from meta_xlm.table_output import columns_and_cells, markdown_table, write_csv
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")


# ---------------------------------------------------------------------------------------------- fine-tuning
def within_language_scores(records: Sequence[Mapping]) -> dict[tuple[str, str, str], tuple[float, str]]:
    """(model, task, language) -> (main-metric score, file) of the within-language records."""
    scores: dict[tuple[str, str, str], tuple[float, str]] = {}
    for record in records:
        if record["setting"] != "within":
            continue
        for language, values in record["scores"].items():
            key = (record["model"], record["task"], language)
            if key in scores:
                raise ValueError(f"{key} is scored twice: in {scores[key][1]} and {record['_path']}")
            scores[key] = (float(values[record["main_metric"]]), record["_path"])
    return scores


def interference_table(records: Sequence[Mapping], mono_model: str = "Mono") -> list[dict]:
    """One row per (task, language, multilingual model) that has a Mono score for the same task and language:
    difference = model − Mono; negative interference where Mono wins (difference < 0)."""
    scores = within_language_scores(records)
    mono = {
        (task, language): value
        for (model, task, language), (value, _) in scores.items()
        if model == mono_model
    }
    if not mono:
        models = sorted({model for model, _, _ in scores})
        raise ValueError(f"no within-language record of mono_model={mono_model!r}; models found: {models}")
    rows = []
    for (model, task, language), (value, _) in sorted(scores.items()):
        if model == mono_model or (task, language) not in mono:
            continue
        difference = value - mono[(task, language)]
        rows.append(
            {
                "task": task,
                "language": language,
                "model": model,
                "mono": mono[(task, language)],
                "score": value,
                "difference": round(difference, 4),
                "negative_interference": difference < 0,
            }
        )
    if not rows:
        raise ValueError(
            f"no multilingual within-language score shares a (task, language) with {mono_model!r}"
        )
    return rows


# ---------------------------------------------------------------------------------------------- pretraining
def read_log_history(run_dir: str | Path) -> list[dict]:
    run_dir = Path(run_dir)
    state = run_dir / "trainer_state.json"
    if not state.is_file():
        checkpoints = sorted(
            (int(match.group(1)), child / "trainer_state.json")
            for child in (run_dir.iterdir() if run_dir.is_dir() else [])
            if (match := CHECKPOINT_PATTERN.fullmatch(child.name))
            and (child / "trainer_state.json").is_file()
        )
        if not checkpoints:
            raise FileNotFoundError(
                f"{run_dir}: no trainer_state.json in the folder or in any checkpoint-N/ (is it a pretraining output_dir?)"
            )
        state = checkpoints[-1][1]
    return json.loads(state.read_text(encoding="utf-8"))["log_history"]


def perplexity_curve(history: Sequence[Mapping], language: str) -> list[tuple[int, float]]:
    """(step, validation perplexity of `language`); exp(eval_<lang>_loss) when the perplexity was not logged.

    One point per step: the pretraining recipe evaluates once more after training, which repeats the last
    periodic evaluation when the run ends on an evaluation step (the later entry wins)."""
    points: dict[int, float] = {}
    for entry in history:
        if f"eval_{language}_perplexity" in entry:
            points[entry["step"]] = float(entry[f"eval_{language}_perplexity"])
        elif f"eval_{language}_loss" in entry:
            points[entry["step"]] = math.exp(entry[f"eval_{language}_loss"])
    return sorted(points.items())


def loss_curve(history: Sequence[Mapping], max_step: int | None = None) -> list[tuple[int, float]]:
    """(step, training loss) up to `max_step`."""
    return [
        (entry["step"], float(entry["loss"]))
        for entry in history
        if "loss" in entry and (max_step is None or entry["step"] <= max_step)
    ]


# ---------------------------------------------------------------------------------------------- output
def curve_rows(curves: Mapping[str, Sequence[tuple[int, float]]], value_name: str) -> list[dict]:
    return [
        {"run": name, "step": step, value_name: value}
        for name, points in curves.items()
        for step, value in points
    ]


def build_report(
    output_dir: str | Path,
    finetune_records: Sequence[Mapping] = (),
    pretraining_runs: Mapping[str, str | Path] | None = None,
    perplexity_languages: Sequence[str] = (),
    loss_runs: Sequence[str] = (),
    loss_max_step: int | None = None,
    mono_model: str = "Mono",
) -> Path:
    """Writes interference.{csv,md}, perplexity_<lang>.{csv,png} (every run that logged that language's
    validation loss; bits_per_character_<lang>.{csv,png} too when every such run measured its tokenizer's
    characters per token), training_loss.{csv,png} (the `loss_runs`) and report.md linking them. Returns report.md."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    histories = {name: read_log_history(path) for name, path in (pretraining_runs or {}).items()}
    characters = {name: json.loads((Path(path) / "characters_per_token.json").read_text(encoding="utf-8"))
                  for name, path in (pretraining_runs or {}).items()
                  if (Path(path) / "characters_per_token.json").is_file()}  # written by recipes/pretrain.py
    sections = ["# Interference report"]
    if finetune_records:
        sections.append(_interference_section(output_dir, finetune_records, mono_model))
    for language in perplexity_languages:
        sections.extend(_perplexity_sections(output_dir, histories, characters, language))
    if loss_runs:
        sections.append(_loss_section(output_dir, histories, loss_runs, loss_max_step))
    report = output_dir / "report.md"
    report.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return report


def _interference_section(output_dir: Path, finetune_records: Sequence[Mapping], mono_model: str) -> str:
    """interference.{csv,md}: every within-language comparison of a multilingual model against `mono_model`."""
    rows = interference_table(finetune_records, mono_model)
    write_csv(output_dir / "interference.csv", rows)
    table = markdown_table(*columns_and_cells(rows))
    (output_dir / "interference.md").write_text(table + "\n", encoding="utf-8")
    count = sum(row["negative_interference"] for row in rows)
    return (f"## Within-language: multilingual − {mono_model}\n\nNegative interference (Mono wins) in {count} of "
            f"{len(rows)} comparisons.\n\n{table}")


def _perplexity_sections(output_dir: Path, histories: Mapping[str, list], characters: Mapping[str, Mapping],
                         language: str) -> list[str]:
    """perplexity_<lang>.{csv,png} (Fig. 2), and bits per character when every run measured its tokenizer."""
    curves = {name: perplexity_curve(history, language) for name, history in histories.items()}
    curves = {name: points for name, points in curves.items() if points}
    if not curves:
        raise ValueError(f"no pretraining run logged eval_{language}_loss; runs: {sorted(histories)}")
    write_csv(output_dir / f"perplexity_{language}.csv", curve_rows(curves, "perplexity"))
    plot_curves(curves, output_dir / f"perplexity_{language}.png", f"Validation perplexity ({language})",
                "perplexity", log_y=True)
    sections = [f"## Validation perplexity, {language} (Fig. 2)\n\n![](perplexity_{language}.png)"]
    scales = {name: characters.get(name, {}).get(language) for name in curves}
    if all(scales.values()):  # every run measured its tokenizer: the figure that compares across tokenizers
        bits = {name: [(step, bits_per_character(value, scales[name])) for step, value in points]
                for name, points in curves.items()}  # fmt: skip
        write_csv(output_dir / f"bits_per_character_{language}.csv", curve_rows(bits, "bits per character"))
        plot_curves(bits, output_dir / f"bits_per_character_{language}.png",
                    f"Validation bits per character ({language})", "bits per character")  # fmt: skip
        sections.append(f"Per character (each run's own tokenizer: comparable where per-token perplexity is "
                        f"not)\n\n![](bits_per_character_{language}.png)")  # fmt: skip
    return sections


def _loss_section(output_dir: Path, histories: Mapping[str, list], loss_runs: Sequence[str],
                  loss_max_step: int | None) -> str:
    """training_loss.{csv,png}: the early training loss of `loss_runs` (Fig. 4c)."""
    unknown = [name for name in loss_runs if name not in histories]
    if unknown:
        raise ValueError(f"loss_runs {unknown} are not among pretraining_runs {sorted(histories)}")
    curves = {name: loss_curve(histories[name], loss_max_step) for name in loss_runs}
    empty = [name for name, points in curves.items() if not points]
    if empty:
        raise ValueError(f"runs {empty} logged no training loss up to step {loss_max_step}")
    write_csv(output_dir / "training_loss.csv", curve_rows(curves, "loss"))
    plot_curves(curves, output_dir / "training_loss.png", "MLM training loss", "loss")
    return "## Early training loss (Fig. 4c)\n\n![](training_loss.png)"


__all__ = [
    "build_report",
    "interference_table",
    "loss_curve",
    "perplexity_curve",
    "read_log_history",
]
