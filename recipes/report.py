"""Interference report: Mono vs multilingual within-language table, Fig. 2 perplexity curves, Fig. 4c loss.

    python recipes/report.py --config recipes/configs/analysis/report_en_sw.yaml [--field value ...]

Writes report.md, interference.{csv,md}, perplexity_<lang>.{csv,png}, training_loss.{csv,png} to output_dir.
"""

from __future__ import annotations

import glob
import logging
import sys
from dataclasses import dataclass, field

from meta_xlm.cli import key_value, parse_config_and_args
from meta_xlm.analysis.report import build_report
from meta_xlm.tasks.records import load_metrics_records

logger = logging.getLogger("report")


@dataclass
class ReportArguments:
    output_dir: str = field(metadata={"help": "where the report, tables and figures go"})
    finetune_metrics: list[str] = field(
        default_factory=list, metadata={"help": "metrics JSON files of recipes/finetune.py (globs allowed)"}
    )
    mono_model: str = field(default="Mono", metadata={"help": "the model name of the monolingual baselines"})
    pretraining_runs: list[str] = field(
        default_factory=list,
        metadata={"help": "NAME=DIR entries: pretraining output_dirs, as named in the figures"},
    )
    perplexity_languages: list[str] = field(
        default_factory=list, metadata={"help": "one Fig. 2 panel per language"}
    )
    loss_runs: list[str] = field(
        default_factory=list, metadata={"help": "run NAMEs for Fig. 4c (JointPair, +adpt, ...)"}
    )
    loss_max_step: int | None = field(default=None, metadata={"help": "last step shown in Fig. 4c"})


def expand(patterns: list[str]) -> list[str]:
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern))
        if not matched:
            raise SystemExit(f"error: finetune_metrics entry {pattern!r} matches no file")
        files.extend(matched)
    return files


def main(argv: list[str]) -> None:
    (args,) = parse_config_and_args((ReportArguments,), argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    runs = dict(key_value(entry, "pretraining_runs", "NAME=DIR") for entry in args.pretraining_runs)
    report = build_report(
        args.output_dir,
        load_metrics_records(expand(args.finetune_metrics)),
        runs,
        args.perplexity_languages,
        args.loss_runs,
        args.loss_max_step,
        args.mono_model,
    )
    logger.info("wrote %s", report)


if __name__ == "__main__":
    main(sys.argv[1:])
