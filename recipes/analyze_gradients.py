"""Gradient conflict between languages over a pretraining run's checkpoints (paper Section 3.1, Fig. 3).

    python recipes/analyze_gradients.py --config recipes/configs/analysis/gradients_en_sw.yaml [--field value ...]

For every checkpoint-N of `run_dir` (or one saved model), the cosine similarity of the languages' gradients of
the shared parameters on `target_sentences` sentences each (paper: 4096), whole model / per layer / attention vs
FFN, plus <ref>-<ref> from two independent batches. Writes gradient_conflict.{csv,jsonl,png} and TensorBoard
scalars to output_dir; `--matrix true` also the languages x languages matrix, gradient_matrix.{csv,png} (the
seven-language study's 7 x 7 heatmap, whole model and per layer, with the En-En baseline). To measure during training instead, add meta_xlm.analysis.gradient_conflict's
GradientConflictCallback to the Trainer.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import meta_xlm  # noqa: F401  (registers the Auto classes)
from meta_xlm.cli import corpus_paths, parse_config_and_args
from meta_xlm.analysis.runs import GradientSettings, gradient_conflict_over_checkpoints, training_checkpoints
from meta_xlm.data import load_corpora

logger = logging.getLogger("analyze_gradients")


@dataclass
class GradientArguments:
    run_dir: str = field(
        metadata={"help": "a pretraining output_dir (checkpoint-N folders) or one saved model"}
    )
    output_dir: str = field(metadata={"help": "where the CSV/JSONL, TensorBoard events and figure go"})
    languages: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "languages to compare"})
    reference_language: str | None = field(
        default=None, metadata={"help": "same-language baseline (default: first)"}
    )
    text_dir: str | None = field(
        default=None, metadata={"help": "folder with one sub-folder of text per language"}
    )
    corpus_files: list[str] = field(
        default_factory=list, metadata={"help": "LANG=PATH entries, override text_dir"}
    )
    max_sentences: int = field(default=20000, metadata={"help": "sentences per language read (first N)"})
    target_sentences: int = field(default=4096, metadata={"help": "sentences per language per measurement"})
    batch_size: int = field(default=32, metadata={"help": "micro-batch size (gradient accumulation)"})
    block_size: int = field(default=256)
    seed: int = field(default=0)
    matrix: bool = field(
        default=False,
        metadata={"help": "also the languages x languages cosine matrix (whole model, per layer) with the "
                          "reference's second batch: gradient_matrix.{csv,png}"},
    )


def main(argv: list[str]) -> None:
    (args,) = parse_config_and_args((GradientArguments,), argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    checkpoints = training_checkpoints(args.run_dir)
    logger.info("%d checkpoint(s): steps %s", len(checkpoints), [step for step, _ in checkpoints])
    corpora = load_corpora(
        args.languages, corpus_paths=corpus_paths(args.corpus_files), text_dir=args.text_dir
    )
    corpora = {
        lang: sentences.select(range(min(args.max_sentences, len(sentences))))
        for lang, sentences in corpora.items()
    }
    settings = GradientSettings(
        args.target_sentences, args.batch_size, args.block_size, args.reference_language, args.seed, args.matrix
    )
    gradient_conflict_over_checkpoints(checkpoints, corpora, settings, args.output_dir)
    logger.info("wrote gradient_conflict.{csv,jsonl,png} to %s", args.output_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
