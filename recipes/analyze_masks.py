"""Per-language Hard Concrete masks on a frozen pretrained model (paper Section 3.1, Fig. 4a/4b).

    python recipes/analyze_masks.py --config recipes/configs/analysis/masks_en_sw.yaml [--field value ...]

Writes to output_dir: pi_<run>.safetensors (π per language, plus <ref>_2: the second reference-language run
on the other half of its sentences, the En-En check), mask_similarity.{csv,png}, mask_extremes_<lang>.{csv,png},
mask_summary.json.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import meta_xlm  # noqa: F401  (registers the Auto classes)
from meta_xlm.cli import corpus_paths, mask_group_specs, parse_config_and_args
from meta_xlm.analysis.masks import DEFAULT_MASK_GROUPS
from meta_xlm.analysis.runs import MaskSettings, load_checkpoint, mask_analysis
from meta_xlm.data import load_corpora

logger = logging.getLogger("analyze_masks")


@dataclass
class MaskArguments:
    model_name_or_path: str = field(
        metadata={"help": "a MetaXLM masked-LM checkpoint folder (with its tokenizer)"}
    )
    output_dir: str = field(metadata={"help": "where π, CSVs and figures go"})
    languages: list[str] = field(
        default_factory=lambda: ["en"], metadata={"help": "languages to learn masks for"}
    )
    reference_language: str = field(
        default="en", metadata={"help": "compared with every other language; run twice"}
    )
    text_dir: str | None = field(
        default=None, metadata={"help": "folder with one sub-folder of text per language"}
    )
    corpus_files: list[str] = field(
        default_factory=list, metadata={"help": "LANG=PATH entries, override text_dir"}
    )
    max_sentences: int = field(default=20000, metadata={"help": "sentences per language used (first N)"})
    mask_groups: list[str] = field(
        default_factory=list,
        metadata={"help": "SUBLAYER:UNIT:REGEX entries (default: attention heads + FFN neurons)"},
    )
    steps: int = field(default=500, metadata={"help": "mask training steps per language"})
    l0_lambda: float = field(default=0.5, metadata={"help": "λ of Eq. 1 (per fraction of gated parameters)"})
    learning_rate: float = field(default=0.1)
    batch_size: int = field(default=16)
    block_size: int = field(default=256)
    extreme_count: int = field(default=10, metadata={"help": "groups shown on each side of Fig. 4b"})
    seed: int = field(default=0)


def main(argv: list[str]) -> None:
    (args,) = parse_config_and_args((MaskArguments,), argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model, tokenizer = load_checkpoint(args.model_name_or_path, args.languages)
    corpora = load_corpora(
        args.languages, corpus_paths=corpus_paths(args.corpus_files), text_dir=args.text_dir
    )
    corpora = {
        lang: sentences.select(range(min(args.max_sentences, len(sentences))))
        for lang, sentences in corpora.items()
    }
    settings = MaskSettings(
        steps=args.steps,
        l0_lambda=args.l0_lambda,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        block_size=args.block_size,
        extreme_count=args.extreme_count,
        seed=args.seed,
    )
    groups = mask_group_specs(args.mask_groups) or list(DEFAULT_MASK_GROUPS)
    summary = mask_analysis(
        model,
        tokenizer,
        corpora,
        args.reference_language,
        settings,
        args.output_dir,
        groups,
        args.model_name_or_path,
    )
    logger.info("π similarity over all layers: %s", summary["similarity_all_layers"])
    logger.info("wrote π, mask_similarity.{csv,png} and mask_extremes_*.{csv,png} to %s", args.output_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
