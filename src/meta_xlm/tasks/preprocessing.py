"""Tokenisation for the downstream tasks, and the way back from model outputs to word tags and answer texts.

- Tagging (NER, POS): each word's label goes on its first subword; its other subwords, and the special tokens,
  get -100 (ignored by the loss and by the metrics). The paper: "label of each word's first subword".
- QA: question + context windows of `max_length` tokens overlapping by `doc_stride`, with the offset mapping
  that takes token positions back to characters of the context; the standard n-best search over start/end
  logits turns features back into one answer text per question.
- NLI: (premise, hypothesis) pair encoding.
Every tokenised example of a MetaXLM model carries `lang_ids`, the index of its language in
`model.config.languages`, which routes it through that language's modules. Other models (e.g. XLM-R) get no
`lang_ids` column.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import datasets
import numpy as np
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from meta_xlm.tasks.loaders import DataReport

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def language_index(
    config: PretrainedConfig, language: str, fallback_language: str | None = None
) -> int | None:
    """Index of `language` in a MetaXLM model's `config.languages` (its `lang_ids` value); None for other models.

    A language the model lacks is an error, unless `fallback_language` (which the model must have) names the
    modules to route it through instead.
    """
    if config.model_type != "meta_xlm":
        return None
    languages = list(config.languages)
    if language in languages:
        return languages.index(language)
    if fallback_language is None:
        raise ValueError(
            f"the model has no modules for language {language!r} (its languages: {languages}); "
            "name one of them as the fallback language (--fallback_language) to route this language through it"
        )
    if fallback_language not in languages:
        raise ValueError(
            f"fallback language {fallback_language!r} is not one of the model's languages {languages}"
        )
    logger.warning(
        "language %r is not in the model's languages %s: routed through %r",
        language,
        languages,
        fallback_language,
    )
    return languages.index(fallback_language)


def _add_lang_ids(encoding: dict, lang_id: int | None, count: int) -> dict:
    if lang_id is not None:
        encoding["lang_ids"] = [lang_id] * count
    return encoding


# ---------------------------------------------------------------------------------------------------------
# Tagging
# ---------------------------------------------------------------------------------------------------------


def first_subword_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Label ids per token: a word's label on its first subword, IGNORE_INDEX elsewhere (specials, later subwords)."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(word_labels[word] if word is not None and word != previous else IGNORE_INDEX)
        if word is not None:
            previous = word
    return labels


def max_context_windows(word_ids_per_window: list[list[int | None]]) -> list[set[int]]:
    """The words each window of one sentence labels: every word exactly once, in the window where its first
    subword has the most context on its shorter side (BERT's "max context" rule for overlapping QA windows).

    word_ids_per_window: the tokenizer's word_ids() of each window, in order. A word whose first subword is in
    no window (the tokenizer made no token of it) is in no set.
    """
    best: dict[int, tuple[int, int]] = {}  # word -> (context, window index)
    for window, word_ids in enumerate(word_ids_per_window):
        positions = [k for k, word in enumerate(word_ids) if word is not None]
        first, last = positions[0], positions[-1]
        previous = None
        for k in positions:
            word = word_ids[k]
            if word != previous:  # k is the word's first subword in this window
                context = min(k - first, last - k)
                if word not in best or context > best[word][0]:
                    best[word] = (context, window)
            previous = word
    labelled = [set() for _ in word_ids_per_window]
    for word, (_, window) in best.items():
        labelled[window].add(word)
    return labelled


def tokenize_tagging(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    label2id: dict[str, int],
    max_length: int,
    lang_id: int | None = None,
    report: DataReport | None = None,
    stride: int | None = None,
) -> datasets.Dataset:
    """Tokenise a TAGGING_FEATURES dataset into input_ids / attention_mask / labels / example_id (+ lang_ids).

    A sentence longer than `max_length` tokens becomes several windows overlapping by `stride` tokens (default
    max_length // 4), as QA contexts do, so that every gold word is scored: each word is labelled in exactly
    one window (`max_context_windows`), and `example_id` (the sentence's row) lets `word_predictions` join the
    windows back into one sentence. Words the tokenizer turns into no token at all get no label: they are
    counted in `report` ("words_without_label") and left out of the scores.
    """
    report = report if report is not None else DataReport()
    stride = stride if stride is not None else max_length // 4
    if not 0 <= stride < max_length - tokenizer.num_special_tokens_to_add():
        raise ValueError(f"stride={stride} must be >= 0 and leave room for new tokens in max_length={max_length}")
    unknown = sorted({tag for tags in dataset["tags"] for tag in tags} - set(label2id))
    if unknown:
        raise ValueError(
            f"tags {unknown} of this {dataset[0]['language']} data are not in the label set {list(label2id)}"
        )

    def align(batch, row_indices):
        encoding = tokenizer(
            batch["tokens"],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            stride=stride,
            return_overflowing_tokens=True,
        )
        source = encoding.pop("overflow_to_sample_mapping")
        windows_of = defaultdict(list)
        for feature, sentence in enumerate(source):
            windows_of[sentence].append(feature)
        encoding["labels"] = [None] * len(source)
        for sentence, features in windows_of.items():
            word_labels = [label2id[tag] for tag in batch["tags"][sentence]]
            labelled = max_context_windows([encoding.word_ids(f) for f in features])
            for feature, words in zip(features, labelled):
                word_ids = [w if w in words else None for w in encoding.word_ids(feature)]
                encoding["labels"][feature] = first_subword_labels(word_ids, word_labels)
            report.add("words_without_label", len(word_labels) - sum(len(words) for words in labelled))
        encoding["example_id"] = [row_indices[sentence] for sentence in source]
        return _add_lang_ids(dict(encoding), lang_id, len(source))

    tokenized = dataset.map(
        align, batched=True, with_indices=True, remove_columns=dataset.column_names, desc="tokenizing words"
    )
    if report.counts["words_without_label"]:
        logger.warning(
            "%d words got no label (the tokenizer made no token of them): they are left out of the scores",
            report.counts["words_without_label"],
        )
    return tokenized


def word_predictions(
    predictions: np.ndarray,
    labels: np.ndarray,
    id2label: dict[int, str],
    example_ids: list[int] | None = None,
) -> tuple[list[list[str]], list[list[str]]]:
    """Word-level (gold, predicted) tag sequences from token logits/ids and first-subword labels.

    predictions: (N, T, C) logits or (N, T) ids; labels: (N, T) with IGNORE_INDEX on non-first subwords.
    example_ids: the sentence of each of the N rows (`tokenize_tagging`'s windows, in order); consecutive rows
    of one sentence are joined into one sequence. None: one row per sentence.
    """
    predicted_ids = predictions.argmax(-1) if predictions.ndim == 3 else predictions
    example_ids = example_ids if example_ids is not None else list(range(len(labels)))
    gold, predicted, previous = [], [], None
    for example, row_predictions, row_labels in zip(example_ids, predicted_ids, labels):
        if example != previous:
            gold.append([])
            predicted.append([])
        keep = row_labels != IGNORE_INDEX
        gold[-1].extend(id2label[int(i)] for i in row_labels[keep])
        predicted[-1].extend(id2label[int(i)] for i in row_predictions[keep])
        previous = example
    return gold, predicted


# ---------------------------------------------------------------------------------------------------------
# Extractive QA
# ---------------------------------------------------------------------------------------------------------


def _truncate_questions(questions: list[str], tokenizer: PreTrainedTokenizerBase, max_question_length: int):
    """Cut each question after its first `max_question_length` tokens (SQuAD/XTREME's max_query_length), so a
    long question cannot leave too little room for the context windows."""
    encoding = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [
        question[: offsets[max_question_length - 1][1]] if len(offsets) > max_question_length else question
        for question, offsets in zip(questions, encoding["offset_mapping"])
    ]


def _encode_qa(
    batch, tokenizer: PreTrainedTokenizerBase, max_length: int, doc_stride: int, max_question_length: int
):
    """Question + context windows; the context is the truncated side, windows overlap by `doc_stride` tokens."""
    if tokenizer.padding_side != "right":
        raise ValueError(
            "QA preprocessing expects tokenizer.padding_side='right' (question first, then context)"
        )
    # Room left for the context: max_length - question - 4 specials (<s> q </s></s> c </s>) must exceed the stride.
    if doc_stride >= max_length - max_question_length - 4:
        raise ValueError(
            f"doc_stride={doc_stride} must be < max_length - max_question_length - 4 = "
            f"{max_length - max_question_length - 4} (max_length={max_length}, max_question_length={max_question_length})"
        )
    questions = _truncate_questions([q.lstrip() for q in batch["question"]], tokenizer, max_question_length)
    return tokenizer(
        questions,
        batch["context"],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )


def _context_span(sequence_ids: list[int | None]) -> tuple[int, int]:
    """First and last token index of the context (sequence 1) in a window."""
    start = sequence_ids.index(1)
    end = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
    return start, end


def _add_answer_positions(encoding, source: list[int], batch, report: DataReport) -> None:
    """start/end token positions of each window's first gold answer; a window that does not contain the whole
    answer points both at the first token (<s>, the "no answer here" position of SQuAD 1.1 training); those
    windows are counted as "windows_without_answer"."""
    encoding["start_positions"], encoding["end_positions"] = [], []
    for feature, example in enumerate(source):
        answers = batch["answers"][example]
        if not answers["text"]:
            raise ValueError(f"question {batch['id'][example]!r} has no gold answer")
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        offsets = encoding["offset_mapping"][feature]
        start, end = _answer_token_span(encoding.sequence_ids(feature), offsets, start_char, end_char)
        if start == 0:
            report.add("windows_without_answer")
        encoding["start_positions"].append(start)
        encoding["end_positions"].append(end)


def prepare_qa_train_features(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 384,
    doc_stride: int = 128,
    max_question_length: int = 64,
    lang_id: int | None = None,
    report: DataReport | None = None,
) -> datasets.Dataset:
    """Training windows with start/end token positions of the first gold answer (see _add_answer_positions)."""
    report = report if report is not None else DataReport()

    def encode(batch):
        encoding = _encode_qa(batch, tokenizer, max_length, doc_stride, max_question_length)
        source = encoding.pop("overflow_to_sample_mapping")
        _add_answer_positions(encoding, source, batch, report)
        encoding.pop("offset_mapping")
        return _add_lang_ids(dict(encoding), lang_id, len(source))

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="QA training windows")


def _answer_token_span(sequence_ids, offsets, start_char: int, end_char: int) -> tuple[int, int]:
    """Token positions (start, end) of the characters [start_char, end_char) in a window, (0, 0) if outside."""
    context_start, context_end = _context_span(sequence_ids)
    if offsets[context_start][0] > start_char or offsets[context_end][1] < end_char:
        return 0, 0
    start = context_start
    while start <= context_end and offsets[start][1] <= start_char:
        start += 1
    end = context_end
    while end >= context_start and offsets[end][0] >= end_char:
        end -= 1
    return start, end


def prepare_qa_eval_features(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 384,
    doc_stride: int = 128,
    max_question_length: int = 64,
    lang_id: int | None = None,
    with_answer_positions: bool = False,
    report: DataReport | None = None,
) -> datasets.Dataset:
    """Evaluation windows with `example_id` and an `offset_mapping` that is None outside the context.

    with_answer_positions: also add the first gold answer's start/end positions (the training labels), so a
    Trainer computes a dev loss and hands the predictions to `compute_metrics`; the windows are the same.
    """
    report = report if report is not None else DataReport()

    def encode(batch):
        encoding = _encode_qa(batch, tokenizer, max_length, doc_stride, max_question_length)
        source = encoding.pop("overflow_to_sample_mapping")
        if with_answer_positions:
            _add_answer_positions(encoding, source, batch, report)
        encoding["example_id"] = []
        for feature, example in enumerate(source):
            sequence_ids = encoding.sequence_ids(feature)
            encoding["example_id"].append(batch["id"][example])
            encoding["offset_mapping"][feature] = [
                tuple(offset) if sequence_ids[k] == 1 else None
                for k, offset in enumerate(encoding["offset_mapping"][feature])
            ]
        return _add_lang_ids(dict(encoding), lang_id, len(source))

    return dataset.map(
        encode, batched=True, remove_columns=dataset.column_names, desc="QA evaluation windows"
    )


def postprocess_qa_predictions(
    examples: datasets.Dataset,
    features: datasets.Dataset,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best_size: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Best answer text per question: over all its windows, the n_best start and end tokens, keep valid spans
    (inside the context, end >= start, at most max_answer_length tokens), pick the highest start+end logit.

    start_logits, end_logits: (num_features, T). Returns question id -> answer text ("" if no valid span).
    """
    if len(features) != len(start_logits):
        raise ValueError(f"{len(features)} features but {len(start_logits)} rows of logits")
    features_of = defaultdict(list)
    for index, example_id in enumerate(features["example_id"]):
        features_of[example_id].append(index)
    offsets_of = features["offset_mapping"]
    answers = {}
    for example in examples:
        context, best_score, best_text = example["context"], -np.inf, ""
        for feature in features_of[example["id"]]:
            offsets = offsets_of[feature]
            starts = np.argsort(start_logits[feature])[-1 : -n_best_size - 1 : -1]
            ends = np.argsort(end_logits[feature])[-1 : -n_best_size - 1 : -1]
            for start in starts:
                for end in ends:
                    if offsets[start] is None or offsets[end] is None:
                        continue
                    if end < start or end - start + 1 > max_answer_length:
                        continue
                    score = start_logits[feature][start] + end_logits[feature][end]
                    if score > best_score:
                        # Byte-level BPE offsets include a token's leading space; answers never start with one.
                        best_score, best_text = score, context[offsets[start][0] : offsets[end][1]].strip()
        answers[example["id"]] = best_text
    return answers


# ---------------------------------------------------------------------------------------------------------
# NLI
# ---------------------------------------------------------------------------------------------------------


def tokenize_nli(
    dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, lang_id: int | None = None
) -> datasets.Dataset:
    """Encode (premise, hypothesis) pairs; the label column becomes `labels`."""

    def encode(batch):
        encoding = tokenizer(batch["premise"], batch["hypothesis"], truncation=True, max_length=max_length)
        encoding["labels"] = batch["label"]
        return _add_lang_ids(dict(encoding), lang_id, len(batch["premise"]))

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="NLI pairs")
