"""Choose the shared vocabulary size by measurement: train the pretraining tokenizer at several sizes, score it.

    python recipes/measure_vocabulary.py --pretrain_config recipes/configs/study/small_7lang_pretrain.yaml \
        --vocab_sizes 2000 4000 8000 16000 --output results/small_7lang/vocabulary.csv

The languages and their text (`languages`, `text_dir`, `corpus_files`), the validation split
(`validation_sentences`) and the sampling temperature come from the pretraining YAML, so the tokenizer is trained
as recipes/pretrain.py trains it (meta_xlm.data.train_shared_tokenizer on a temperature-balanced sample of the
training sentences, seed 0) and scored on each language's held-out validation sentences, which it never saw.
Per size and language: the unknown-token rate (byte-level BPE maps every string to tokens, so a non-zero rate
would be a bug), characters per token and tokens per whitespace word (how finely a script is cut: the more
tokens a word takes, the less text one 64-token block holds), and how many distinct vocabulary entries the
language's held-out text uses.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from meta_xlm.cli import corpus_paths, parse_config_and_args
from meta_xlm.data import load_corpora, split_corpora, tokenization_statistics, train_shared_tokenizer

logger = logging.getLogger("measure_vocabulary")
CSV_FIELDS = ["vocab_size", "language", "held_out_sentences", "unk_rate", "chars_per_token", "tokens_per_word",
              "distinct_tokens"]  # fmt: skip
# The pretraining fields this recipe reads; recipes/pretrain.py's defaults where the YAML leaves one out.
PRETRAIN_DEFAULTS = {"text_dir": None, "corpus_files": [], "validation_sentences": 1000, "temperature": 1 / 0.7,
                     "tokenizer_temperature": 1 / 0.7}  # fmt: skip


@dataclass
class VocabularyArguments:
    pretrain_config: str = field(metadata={"help": "recipes/pretrain.py YAML: languages, text and split"})
    output: str = field(metadata={"help": "CSV to write (one row per vocabulary size and language)"})
    vocab_sizes: list[int] = field(default_factory=lambda: [2000, 4000, 8000, 16000])
    tokenizer_training_sentences: int = field(
        default=50000, metadata={"help": "temperature-balanced sample the BPE learns from (pretraining: its own)"}
    )
    held_out_sentences: int = field(default=500, metadata={"help": "validation sentences scored per language"})
    seed: int = field(default=0, metadata={"help": "the study's first seed: the split and sample pretraining uses"})


def pretrain_fields(path: str) -> dict:
    """languages, text_dir, corpus_files, validation_sentences and temperatures of a pretraining YAML."""
    values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not values.get("languages"):
        raise SystemExit(f"error: {path} has no `languages`: expected the pretraining config of the study")
    return {"languages": values["languages"], **{key: values.get(key, default) for key, default in PRETRAIN_DEFAULTS.items()}}


def measure(train: Mapping, held_out: Mapping[str, Sequence[str]], args: VocabularyArguments, temperature: float):
    """One CSV row per (vocabulary size, language)."""
    rows = []
    for vocab_size in args.vocab_sizes:
        tokenizer = train_shared_tokenizer(train, vocab_size, temperature, args.tokenizer_training_sentences,
                                           args.seed, show_progress=False)  # fmt: skip
        for language, sentences in held_out.items():
            statistics = tokenization_statistics(tokenizer, sentences)
            scored = {"held_out_sentences": statistics.pop("sentences")}
            rows.append({"vocab_size": vocab_size, "language": language, **scored, **statistics})
            logger.info("vocab %d %s: %s", vocab_size, language, statistics)
    return rows


def write_rows(rows: Sequence[Mapping], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows({**row, **{k: f"{row[k]:.4g}" for k in ("unk_rate", "chars_per_token", "tokens_per_word")}}
                         for row in rows)  # fmt: skip


def main(argv: list[str]) -> None:
    (args,) = parse_config_and_args((VocabularyArguments,), argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    config = pretrain_fields(args.pretrain_config)
    corpora = load_corpora(config["languages"], corpus_paths=corpus_paths(config["corpus_files"]),
                           text_dir=config["text_dir"])  # fmt: skip
    # data_seed_offset = -seed in the study: every seed splits with seed 0, as here
    train, validation = split_corpora(corpora, config["validation_sentences"], None, 0)
    held_out = {language: sentences["text"][: args.held_out_sentences] for language, sentences in validation.items()}
    rows = measure(train, held_out, args, config["tokenizer_temperature"])
    write_rows(rows, args.output)
    logger.info("wrote %d rows to %s", len(rows), args.output)


if __name__ == "__main__":
    main(sys.argv[1:])
