"""Test predictions in XTREME's submission layout, so XTREME's own `evaluate.py` can score them.

    <directory>/panx/test-<lang>.tsv     NER: one predicted tag per word, a blank line after each sentence
    <directory>/udpos/test-<lang>.tsv    POS: the same
    <directory>/xnli/test-<lang>.tsv     XNLI: one predicted label per line
    <directory>/tydiqa/test-<lang>.json  TyDiQA-GoldP: {question id: answer text}

(Hu et al., 2020, github.com/google-research/xtreme: `evaluate.py --prediction_folder <directory>
--label_folder <gold>`.) A long sentence tokenised into several windows (`tokenize_tagging`'s stride) is joined back
into one; a word that got no prediction (no subword token) gets `TRUNCATED_FILLER`, so every line still lines up
with a gold word.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np

from meta_xlm.tasks.preprocessing import postprocess_qa_predictions, word_predictions

XTREME_TASK_FOLDERS = {"ner": "panx", "pos": "udpos", "qa": "tydiqa", "nli": "xnli"}
TRUNCATED_FILLER = {"ner": "O", "pos": "X"}  # "outside" / UPOS "other": the tag that claims least


def xtreme_prediction_path(directory: str | Path, task: str, language: str) -> Path:
    suffix = "json" if task == "qa" else "tsv"
    return Path(directory) / XTREME_TASK_FOLDERS[task] / f"test-{language}.{suffix}"


def tagging_lines(
    task: str, examples: datasets.Dataset, features, predictions, label_ids, labels: list[str]
) -> list[str]:
    """One tag per word of every example (first-subword predictions, a sentence's windows joined), a blank line
    after each sentence."""
    example_ids = features["example_id"] if "example_id" in features.column_names else None
    _, predicted = word_predictions(
        np.asarray(predictions), np.asarray(label_ids), dict(enumerate(labels)), example_ids
    )
    if len(predicted) != len(examples):
        raise ValueError(
            f"{len(predicted)} predicted sentences for {len(examples)} test sentences: the features are not the "
            "test examples' windows, in order"
        )
    lines = []
    for tags, example in zip(predicted, examples):
        words = len(example["tokens"])
        lines += tags[:words] + [TRUNCATED_FILLER[task]] * (words - len(tags)) + [""]
    return lines


def write_xtreme_predictions(
    directory: str | Path,
    task: str,
    language: str,
    examples: datasets.Dataset,
    features: datasets.Dataset,
    predictions,
    label_ids,
    labels: list[str],
    n_best_size: int = 20,
    max_answer_length: int = 30,
) -> Path:
    """Write one language's test predictions (model outputs as `Trainer.predict` returns them); the path."""
    path = xtreme_prediction_path(directory, task, language)
    path.parent.mkdir(parents=True, exist_ok=True)
    if task == "qa":
        start_logits, end_logits = predictions
        answers = postprocess_qa_predictions(
            examples, features, start_logits, end_logits, n_best_size, max_answer_length
        )
        path.write_text(json.dumps(answers, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return path
    if task == "nli":
        lines = [labels[int(i)] for i in np.asarray(predictions).argmax(-1)]
    else:
        lines = tagging_lines(task, examples, features, predictions, label_ids, labels)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
