"""Results of several models in the paper's table layout: rows = models, columns = languages + avg, one block
per setting (within-language, zero-shot cross-lingual), one table per task (Tables 2, 3, 6).

Input: metrics records as recipes/finetune.py writes them, read with
`meta_xlm.tasks.records.load_metrics_records` (the format is in that module's docstring). Several records of
one (task, setting, model) are merged (a within-language run per language); the same language twice is an
error. `avg` is the mean over the row's scored languages among the table's columns, English excluded, as the
paper averages over its target languages only. Rendered as Markdown, CSV and JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from meta_xlm.table_output import csv_text, markdown_table
from meta_xlm.tasks.metrics import MAIN_METRIC
from meta_xlm.tasks.records import SETTINGS
from meta_xlm.tasks.reference import REFERENCE, REFERENCE_LANGUAGES, SOURCE

SETTING_TITLES = {"within": "Within-language Monolingual", "zero_shot": "Zero-shot Cross-lingual"}
TASK_TITLES = {"ner": "NER (F1)", "pos": "POS (F1)", "qa": "TyDiQA-GoldP (F1)", "nli": "XNLI (accuracy)"}


@dataclass
class TableRow:
    model: str
    scores: dict[str, float]
    avg: float | None
    source: str  # "ours: <metrics files>" or "paper: <table>"


@dataclass
class ResultsTable:
    task: str
    languages: list[str]
    blocks: dict[str, list[TableRow]] = field(default_factory=dict)  # setting -> rows

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "metric": MAIN_METRIC[self.task],
            "languages": self.languages,
            "blocks": {
                setting: [
                    {"model": r.model, "scores": r.scores, "avg": r.avg, "source": r.source} for r in rows
                ]
                for setting, rows in self.blocks.items()
            },
        }

    def to_markdown(self) -> str:
        header = ["model", *self.languages, "avg"]
        rows, partial = [], False
        for setting, block in self.blocks.items():
            rows.append([f"**{SETTING_TITLES[setting]}**", *[""] * (len(header) - 1)])
            for row in block:
                marker = " †" if self._is_partial(row) else ""
                partial = partial or bool(marker)
                cells = [_cell(row.scores.get(language)) for language in self.languages]
                rows.append([row.model, *cells, _cell(row.avg) + marker])
        lines = [f"### {TASK_TITLES[self.task]}", "", markdown_table(header, rows)]
        if partial:
            lines += ["", "† average over the scored languages only (not every column has a score)."]
        return "\n".join(lines) + "\n"

    def _is_partial(self, row: TableRow) -> bool:
        return row.avg is not None and any(
            language not in row.scores for language in self.languages if language != "en"
        )

    def csv_rows(self, languages: list[str]) -> list[list[str]]:
        """Rows `task, setting, model, <score per language in languages>, avg, source`."""
        return [
            [
                self.task,
                setting,
                row.model,
                *[_number(row.scores.get(language)) for language in languages],
                _number(row.avg),
                row.source,
            ]
            for setting, rows in self.blocks.items()
            for row in rows
        ]


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _average(scores: dict[str, float], languages: list[str]) -> float | None:
    targets = [scores[language] for language in languages if language != "en" and language in scores]
    return sum(targets) / len(targets) if targets else None


def _merge_rows(
    records: list[dict], task: str, setting: str
) -> dict[str, tuple[dict[str, float], list[str]]]:
    """model -> (language -> main score, files), merging the records of one task and setting."""
    metric = MAIN_METRIC[task]
    merged: dict[str, tuple[dict[str, float], list[str]]] = {}
    for record in records:
        if record["task"] != task or record["setting"] != setting:
            continue
        scores, files = merged.setdefault(record["model"], ({}, []))
        for language, values in record["scores"].items():
            if language in scores:
                raise ValueError(
                    f"{record['_path']}: {task} {setting} score of model {record['model']!r} for {language!r} is "
                    f"also in {files}; give each (model, language) once"
                )
            scores[language] = values[metric]
        files.append(record["_path"])
    return merged


def build_results_table(
    records: list[dict], task: str, languages: list[str] | None = None, with_reference: bool = False
) -> ResultsTable:
    """One task's table from metrics records (and the paper's numbers when `with_reference`)."""
    if task not in MAIN_METRIC:
        raise ValueError(f"task must be one of {sorted(MAIN_METRIC)}, got {task!r}")
    if languages is None:
        found = {language for r in records if r["task"] == task for language in r["scores"]}
        languages = [*(["en"] if "en" in found else []), *REFERENCE_LANGUAGES[task]]
        languages += sorted(found - set(languages))
    table = ResultsTable(task=task, languages=languages)
    for setting in SETTINGS:
        rows = [
            TableRow(
                model,
                {k: v for k, v in scores.items() if k in languages},
                _average(scores, languages),
                "ours: " + ", ".join(files),
            )
            for model, (scores, files) in _merge_rows(records, task, setting).items()
        ]
        if with_reference and setting in REFERENCE[task]:
            for model, reference in REFERENCE[task][setting].items():
                scores = {language: reference[language] for language in languages if language in reference}
                rows.append(TableRow(f"paper: {model}", scores, reference["avg"], f"paper: {SOURCE[task]}"))
        if rows:
            table.blocks[setting] = rows
    return table


def build_results_tables(records: list[dict], tasks: list[str] | None = None, with_reference: bool = False):
    """One ResultsTable per task (tasks in the paper's order: ner, pos, qa, nli; default: those in records)."""
    present = {record["task"] for record in records}
    tasks = tasks or [task for task in MAIN_METRIC if task in present]
    return [build_results_table(records, task, with_reference=with_reference) for task in tasks]


def render(tables: list[ResultsTable]) -> dict[str, str]:
    """The tables as one Markdown document, one CSV (columns: the union of the tables' languages) and one JSON."""
    languages = list(dict.fromkeys(language for table in tables for language in table.languages))
    header = ["task", "setting", "model", *languages, "avg", "source"]
    rows = [row for table in tables for row in table.csv_rows(languages)]
    return {
        "md": "\n".join(table.to_markdown() for table in tables),
        "csv": csv_text(header, rows),
        "json": json.dumps([table.to_json() for table in tables], indent=2, ensure_ascii=False) + "\n",
    }
