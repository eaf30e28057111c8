"""Collect fine-tuning results (metrics.json of recipes/finetune.py) of several models into the paper's tables.

    python recipes/results_table.py runs/finetune --output_dir runs/tables --with_reference

Rows = models, columns = languages + avg, within-language and zero-shot blocks, one table per task.
Writes results.md, results.csv and results.json to --output_dir and prints the Markdown.
--with_reference adds the paper's numbers (Tables 2, 3, 6; rows "paper: <model>").
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from meta_xlm.tasks.records import find_metrics_files, load_metrics_records
from meta_xlm.tasks.tables import build_results_tables, render


@dataclass
class TableArguments:
    metrics: list[str] = field(metadata={"help": "metrics.json files or folders searched for them"})
    output_dir: str = field(metadata={"help": "where results.md / results.csv / results.json go"})
    tasks: list[str] = field(default_factory=list, metadata={"help": "ner pos qa nli (default: those found)"})
    with_reference: bool = field(default=False, metadata={"help": "add the paper's per-language numbers"})


def main(argv: list[str]) -> None:
    parser = HfArgumentParser(TableArguments)
    # the metrics paths may also be given positionally
    positional = []
    while argv and not argv[0].startswith("--"):
        positional.append(argv.pop(0))
    if positional:
        argv = ["--metrics", *positional, *argv]
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    records = load_metrics_records(find_metrics_files(args.metrics))
    documents = render(build_results_tables(records, args.tasks or None, args.with_reference))
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for extension, text in documents.items():
        (output_dir / f"results.{extension}").write_text(text, encoding="utf-8")
    print(documents["md"])
    print(f"written: {', '.join(str(output_dir / f'results.{e}') for e in documents)}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
