"""The metrics record of a fine-tuning run (`metrics.json`): its format, writer and one validating reader.

recipes/finetune.py writes one record per run (built by `meta_xlm.tasks.finetuning.metrics_record`); the model
card (`meta_xlm.model_card`), the results tables (`meta_xlm.tasks.tables`) and the interference report
(`meta_xlm.analysis.report`) read records with `load_metrics_records`, so all of them accept the same files:
    {"task": "ner" | "pos" | "qa" | "nli", "setting": "within" | "zero_shot", "model": "<row name>",
     "main_metric": "<MAIN_METRIC[task]>", "scores": {"<lang>": {"<metric>": <number>, ...}, ...},
     "split": "<split>" (optional), ... (avg, selection, data: what the run used)}
Every language's scores hold the main metric. A record read from a file remembers it under "_path".
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from meta_xlm.tasks.metrics import MAIN_METRIC

RECORD_FILE = "metrics.json"
REQUIRED_FIELDS = ("task", "setting", "model", "main_metric", "scores")
SETTINGS = ("within", "zero_shot")


def record_problems(record: Mapping) -> list[str]:
    """What makes `record` not a metrics record (empty when it is one)."""
    missing = [key for key in REQUIRED_FIELDS if key not in record]
    problems = [f"no {missing} field (a record has {list(REQUIRED_FIELDS)})"] if missing else []
    task, setting = record.get("task"), record.get("setting")
    if "task" in record and task not in MAIN_METRIC:
        problems.append(f"task {task!r} is not one of {sorted(MAIN_METRIC)}")
    if "setting" in record and setting not in SETTINGS:
        problems.append(f"setting {setting!r} is not one of {list(SETTINGS)}")
    main_metric = record.get("main_metric")
    if task in MAIN_METRIC and "main_metric" in record and main_metric != MAIN_METRIC[task]:
        problems.append(f"main_metric {main_metric!r} of task {task!r} should be {MAIN_METRIC[task]!r}")
    scores = record.get("scores", {})
    if not isinstance(scores, Mapping):
        return [*problems, f"scores is a {type(scores).__name__}, expected {{language: {{metric: number}}}}"]
    for language, values in scores.items():
        value = values.get(main_metric) if isinstance(values, Mapping) else None
        if main_metric is not None and not isinstance(value, numbers.Real):
            problems.append(f"scores[{language!r}] has no number for main_metric {main_metric!r}")
    return problems


def check_metrics_record(record: Mapping, source: str | os.PathLike) -> None:
    """Raise ValueError naming `source` and every problem of `record`."""
    problems = record_problems(record)
    if problems:
        raise ValueError(f"{source}: not a fine-tuning metrics record: " + "; ".join(problems))


def write_metrics(record: dict, output_dir: str | os.PathLike) -> Path:
    """Check `record` and write it to `output_dir/metrics.json`; returns the path."""
    path = Path(output_dir) / RECORD_FILE
    check_metrics_record(record, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_metrics_records(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """Read and check metrics files; each record remembers its file under "_path"."""
    records = []
    for path in map(Path, paths):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read fine-tuning metrics {path}: {error}") from error
        if not isinstance(record, dict):
            raise ValueError(f"{path}: a metrics record is a JSON object, this is a {type(record).__name__}")
        check_metrics_record(record, path)
        records.append({**record, "_path": str(path)})
    return records


def find_metrics_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Metrics files among `paths`: a file as is, a folder searched for metrics.json at any depth."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(path.rglob(RECORD_FILE))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path} is neither a metrics file nor a folder")
    if not found:
        raise FileNotFoundError(f"no {RECORD_FILE} under {[str(p) for p in paths]}")
    return found


__all__ = [
    "check_metrics_record",
    "find_metrics_files",
    "load_metrics_records",
    "record_problems",
    "write_metrics",
]
