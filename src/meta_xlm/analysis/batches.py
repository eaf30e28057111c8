"""MLM batches of one language for the analyses (gradient probe, mask learning), from a checkpoint's tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from meta_xlm.data import MLMCollator, tokenize_into_blocks


def check_languages(config, languages: Sequence[str], source: str) -> None:
    """Every requested language must be one the checkpoint was trained with (`config.languages`)."""
    missing = [language for language in languages if language not in config.languages]
    if missing:
        raise ValueError(
            f"checkpoint {source} has languages {list(config.languages)}; requested language(s) {missing} are not among "
            "them (the analyses need a model trained on every language they compare)"
        )


def language_dataloader(
    sentences: Dataset,
    tokenizer,
    lang_id: int,
    block_size: int,
    batch_size: int,
    seed: int,
    mlm_probability: float = 0.15,
) -> DataLoader:
    """Shuffled MLM batches {input_ids, attention_mask, labels, lang_ids} of one language's "text" sentences,
    packed into blocks of `block_size` tokens as in pretraining."""
    blocks = tokenize_into_blocks(sentences, tokenizer, block_size, lang_id)
    if len(blocks) == 0:
        raise ValueError(
            f"{len(sentences)} sentences (lang_id {lang_id}) make no block of {block_size} tokens"
        )
    return DataLoader(
        blocks.with_format("python"),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=MLMCollator(tokenizer, mlm_probability=mlm_probability),
    )


__all__ = ["check_languages", "language_dataloader"]
