"""Run a reproduction study: pretraining runs × fine-tuning tasks × seeds, then results.csv and report.md.

    python recipes/study.py --study recipes/configs/study/small_en_sw.yaml
    python recipes/study.py --study recipes/configs/study/small_en_sw.yaml --report_only true
    python recipes/study.py --study recipes/configs/study/small_en_sw.yaml --check true   # validate, run nothing
    python recipes/study.py --study ... --measure_characters_per_token true   # complete records from before it

Each cell (a pretraining run, a fine-tuning run, a gradient analysis) runs one of the package's recipes and is
recorded complete atomically (a small JSON record under the study's records_dir, committed with the results);
rerunning the command skips complete cells and redoes interrupted ones, so the study can run in parts
(--max_cells N, --models a b), be killed at any point and go on from a fresh clone. The report is rebuilt from
the records after every cell (meta_xlm.study, meta_xlm.study_report).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from transformers import AutoTokenizer

from meta_xlm.cli import corpus_paths, parse_config_and_args
from meta_xlm.data import characters_per_token, load_corpora, pretraining_splits
from meta_xlm.study import (
    RECIPES, StudySpec, load_study, pretrain_config, pretrained_model, record_path, run_study, write_record,
)
from meta_xlm.study_report import build_study_report, pretrain_records

logger = logging.getLogger("study")


@dataclass
class StudyArguments:
    study: str = field(metadata={"help": "study file (recipes/configs/study/*.yaml)"})
    models: list[str] = field(default_factory=list, metadata={"help": "only these grid rows (default: all)"})
    max_cells: int | None = field(default=None, metadata={"help": "stop after running this many cells"})
    report_only: bool = field(default=False, metadata={"help": "only rebuild results.csv and report.md"})
    notes: str | None = field(default=None, metadata={"help": "Markdown file whose text heads report.md"})
    check: bool = field(
        default=False, metadata={"help": "only check the study file: every row's pretraining config must parse"}
    )
    measure_characters_per_token: bool = field(
        default=False,
        metadata={"help": "only add characters per token (the scale of bits per character) to pretraining records "
                          "written before pretraining measured it, then rebuild the report"},
    )


def pretrain_recipe():
    """recipes/pretrain.py as a module: its argument classes and cross-field rules."""
    spec = importlib.util.spec_from_file_location("study_pretrain_recipe", RECIPES / "pretrain.py")
    pretrain = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(pretrain)  # registered first: its dataclasses look their module up
    return pretrain


def parse_pretrain_config(pretrain, config: dict, folder: Path, name: str):
    """(data_args, training_args) of a pretraining config as recipes/pretrain.py parses it (defaults resolved)."""
    path = Path(folder) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    data_args, _, _, _, training_args = parse_config_and_args(pretrain.ARGUMENT_CLASSES, ["--config", str(path)])
    return data_args, training_args


def check_pretrain_rows(study: StudySpec) -> None:
    """Parse every row's pretraining config (its YAML + overrides, first seed) with recipes/pretrain.py's own
    argument classes and cross-field rules, so a misspelt field, a bad value (e.g. gradient_surgery: foo) or a
    missing companion field (meta_learning without meta_validation_sentences) fails now, not hours in."""
    pretrain = pretrain_recipe()
    with tempfile.TemporaryDirectory() as folder:
        for model in study.models:
            config = pretrain_config(model, model.seeds[0], Path(folder) / model.name)
            try:
                data_args, training_args = parse_pretrain_config(pretrain, config, folder, model.name)
                pretrain.check_field_combinations(data_args, training_args)
            except (ValueError, SystemExit) as error:
                raise ValueError(f"{study.name}: model {model.name!r}: {error}") from None
            check_task_languages(study, model, data_args.languages)


def measure_characters_per_token(study: StudySpec) -> int:
    """Add `characters_per_token` to every pretraining record written before recipes/pretrain.py measured it:
    the run's validation sentences, split again from its recorded config as the recipe split them
    (`pretraining_splits`), cut by its own tokenizer (the kept model's, or the run folder's). A record whose
    tokenizer is gone (no kept model, runs_dir scratch) is named and left as it is. Returns how many records it
    completed."""
    pretrain, completed = pretrain_recipe(), 0
    with tempfile.TemporaryDirectory() as folder:
        for model, seed, record in pretrain_records(study):
            if "characters_per_token" in record:
                continue
            try:
                model_folder = pretrained_model(study, model, seed)
            except FileNotFoundError:
                logger.warning("%s seed %d: no kept model or run folder holds its tokenizer: record left without "
                               "characters per token", model.name, seed)  # fmt: skip
                continue
            data_args, training_args = parse_pretrain_config(pretrain, record["config"], folder, model.name)
            corpora = load_corpora(data_args.languages, corpus_paths=corpus_paths(data_args.corpus_files),
                                   text_dir=data_args.text_dir, hub_dataset=data_args.hub_dataset,
                                   hub_config_template=data_args.hub_config_template)  # fmt: skip
            _, validation, _ = pretraining_splits(
                corpora, data_args.validation_sentences, pretrain.subsample_sizes(data_args.subsample),
                training_args.seed + data_args.data_seed_offset,
                data_args.meta_validation_sentences if training_args.meta_learning else None,
            )
            tokenizer = AutoTokenizer.from_pretrained(model_folder)
            record["characters_per_token"] = characters_per_token(tokenizer, validation)
            write_record(record_path(study, "pretrain", model.run_name, seed), record)
            logger.info("%s seed %d: characters per token %s", model.name, seed, record["characters_per_token"])
            completed += 1
    return completed


def check_task_languages(study: StudySpec, model, languages: list[str]) -> None:
    """Every task the row fine-tunes on must be in languages the model was pretrained on (a Mono-sw model has no
    English modules or vocabulary for an en -> sw zero-shot task): name the row's `tasks` instead."""
    for task in filter(model.fine_tunes, study.tasks):
        missing = sorted({task.train_language, *task.eval_languages} - set(languages))
        if missing:
            raise ValueError(
                f"{study.name}: model {model.name!r} is pretrained on {languages}, task {task.name!r} needs {missing}: "
                "list the tasks it can run as the row's `tasks`"
            )


def main(argv: list[str]) -> None:
    (args,) = parse_config_and_args((StudyArguments,), argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    study = load_study(args.study)
    if args.check:
        check_pretrain_rows(study)
        logger.info("%s: %d rows, every pretraining config parses", args.study, len(study.models))
        return
    notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
    if args.measure_characters_per_token:
        logger.info("%d pretraining records completed with characters per token", measure_characters_per_token(study))
    remaining = 0 if args.report_only or args.measure_characters_per_token else args.max_cells
    while (remaining is None or remaining > 0) and run_study(study, args.models or None, max_cells=1):
        build_study_report(study, notes=notes)  # after every cell: a partial study has an up-to-date report
        remaining = None if remaining is None else remaining - 1
    report = build_study_report(study, notes=notes)
    logger.info("report: %s", report)


if __name__ == "__main__":
    main(sys.argv[1:])
