"""Fine-tune and evaluate a pretrained model on NER / POS / TyDiQA-GoldP / XNLI (the paper's Appendix A).

    accelerate launch recipes/finetune.py --task pos --setting within --train_language te \
        --model_name_or_path runs/joint_pair_en_te --output_dir runs/finetune/pos_within_te
    accelerate launch recipes/finetune.py --task ner --setting zero_shot --eval_languages te \
        --model_name_or_path runs/joint_pair_en_te --output_dir runs/finetune/ner_zero_shot
    python recipes/finetune.py --config recipes/configs/finetune/<file>.yaml [--field value ...]

Defaults are the paper's: epochs 10/10/2/200, the hyperparameter grid, selection on the English (zero-shot)
or target (within-language) dev set, a checkpoint per epoch, the whole network fine-tuned. Small runs override
--epochs, --batch_sizes, --learning_rates, --max_grid_points, --max_steps, --max_train_examples.
Writes <output_dir>/metrics.json (per eval language + avg); recipes/results_table.py collects those files.
Every field of FinetuneArguments and TrainingArguments can be set in the YAML file or on the command line; the
command line wins. An unknown key is an error.
"""

from __future__ import annotations

import logging
import sys

import yaml
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, TrainingArguments, set_seed

import meta_xlm  # noqa: F401  (registers the Auto classes for model_type "meta_xlm")
from meta_xlm.tasks.finetuning import FinetuneArguments, check_arguments, run_finetuning, write_metrics

logger = logging.getLogger("finetune")


def parse_arguments(argv: list[str]) -> tuple[FinetuneArguments, TrainingArguments]:
    """YAML (--config) values become parser defaults; the remaining command-line flags override them."""
    parser = HfArgumentParser((FinetuneArguments, TrainingArguments))
    config_parser = HfArgumentParser(())
    config_parser.add_argument("--config", default=None)
    known, rest = config_parser.parse_known_args(argv)
    if known.config is not None:
        with open(known.config, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        unknown = sorted(set(values) - {action.dest for action in parser._actions})
        if unknown:
            raise SystemExit(
                f"error: {known.config}: unknown key(s) {unknown}; see `python {sys.argv[0]} --help`"
            )
        parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(args=rest)


def main(argv: list[str]) -> None:
    args, training_args = parse_arguments(argv)
    check_arguments(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model_config = AutoConfig.from_pretrained(args.model_name_or_path)
    record = run_finetuning(args, training_args, tokenizer, model_config)
    if training_args.process_index == 0:
        path = write_metrics(record, training_args.output_dir)
        logger.info(
            "%s %s %s: %s",
            record["task"],
            record["setting"],
            record["main_metric"],
            {
                language: round(scores[record["main_metric"]], 2)
                for language, scores in record["scores"].items()
            },
        )
        logger.info("metrics written to %s", path)


if __name__ == "__main__":
    main(sys.argv[1:])
