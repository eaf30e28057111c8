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
command line wins. An unknown key is an error. --data_dir defaults to $META_XLM_DATA, else to ../shared/data
beside this checkout.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, TrainingArguments, set_seed

import meta_xlm  # noqa: F401  (registers the Auto classes for model_type "meta_xlm")
from meta_xlm.cli import leave_process_group, parse_config_and_args
from meta_xlm.cpu_allocator import reuse_freed_memory_when_on
from meta_xlm.tasks.finetuning import FinetuneArguments, check_arguments, run_finetuning
from meta_xlm.tasks.records import write_metrics

logger = logging.getLogger("finetune")
# The benchmark data sits beside a checkout (../shared/data); META_XLM_DATA points anywhere else.
CHECKOUT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA_DIR = os.environ.get("META_XLM_DATA", str(CHECKOUT_DATA_DIR))


def main(argv: list[str]) -> None:
    args, training_args = parse_config_and_args((FinetuneArguments, TrainingArguments), argv)
    args.data_dir = args.data_dir or DEFAULT_DATA_DIR
    check_arguments(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    reuse_freed_memory_when_on(training_args.device)
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
    leave_process_group()
