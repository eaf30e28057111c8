"""Tokenisation with first-subword labels, QA windows + n-best post-processing, NLI pairs, lang_ids."""

import itertools

import numpy as np
import pytest
from conftest import shared_data_path
from fixtures.tiny_checkpoint import make_tiny_tokenizer
from transformers import DataCollatorForTokenClassification, XLMRobertaConfig

from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.tasks.loaders import (
    DataReport,
    load_conllu,
    load_squad_json,
    load_token_tag_file,
    load_xnli_tsv,
)
from meta_xlm.tasks.preprocessing import (
    IGNORE_INDEX,
    language_index,
    max_context_windows,
    postprocess_qa_predictions,
    prepare_qa_eval_features,
    prepare_qa_train_features,
    tokenize_nli,
    tokenize_tagging,
    word_predictions,
)


@pytest.fixture(scope="module")
def tokenizer():
    shared_data_path("text")
    return make_tiny_tokenizer(shared_data_path)


# One real sentence per script: (file under ../shared/data, loader, language).
SCRIPT_SAMPLES = {
    "Latin": (("ud", "UD_English-EWT", "en_ewt-ud-dev.conllu.gz"), "conllu", "en"),
    "Arabic": (("pos", "xtreme_udpos", "dev-ar.tsv.gz"), "upos", "ar"),
    "Cyrillic": (("ud", "UD_Russian-Taiga", "ru_taiga-ud-dev.conllu.gz"), "conllu", "ru"),
    "Devanagari": (("ner", "panx_xtreme", "dev-hi.tsv.gz"), "iob2", "hi"),
    "Telugu": (("ud", "UD_Telugu-MTG", "te_mtg-ud-dev.conllu.gz"), "conllu", "te"),
}


@pytest.mark.parametrize("script", sorted(SCRIPT_SAMPLES))
def test_first_subword_labels_reproduce_word_labels(tokenizer, shared_data, script):
    parts, kind, language = SCRIPT_SAMPLES[script]
    path = shared_data(*parts)
    dataset = load_conllu(path, language) if kind == "conllu" else load_token_tag_file(path, language, kind)
    # the first sentence of 8+ words whose words all split into several subwords somewhere
    sentence = next(row for row in dataset if len(row["tokens"]) >= 8)
    sentence_only = dataset.filter(lambda row: row["id"] == sentence["id"])
    label_list = sorted({tag for tag in sentence["tags"]})
    label2id = {tag: i for i, tag in enumerate(label_list)}
    encoded = tokenize_tagging(sentence_only, tokenizer, label2id, max_length=512)[0]
    labels = np.array(encoded["labels"])
    # the labelled positions carry exactly the word labels, in order
    assert [label_list[i] for i in labels[labels != IGNORE_INDEX]] == sentence["tags"]
    # and each labelled position starts its word: the tokens up to the next labelled position spell the word
    positions = list(np.flatnonzero(labels != IGNORE_INDEX)) + [len(labels) - 1]  # last = </s>
    spelled = [tokenizer.decode(encoded["input_ids"][a:b]).strip() for a, b in itertools.pairwise(positions)]
    assert spelled == sentence["tokens"]
    assert any(b - a > 1 for a, b in itertools.pairwise(positions)), (
        "no multi-subword word: the test would be weak"
    )


def test_long_sentences_are_windowed_and_every_word_is_labelled_once(tokenizer, shared_data):
    """max_length 12 cuts most UD sentences: their windows must still label each gold word exactly once, and
    word_predictions must join the windows back into the sentence's own tag sequence."""
    dataset = load_conllu(shared_data("ud", "UD_English-EWT", "en_ewt-ud-dev.conllu.gz"), "en").select(
        range(20)
    )
    label_list = sorted({t for tags in dataset["tags"] for t in tags})
    label2id = {tag: i for i, tag in enumerate(label_list)}
    report = DataReport()
    encoded = tokenize_tagging(dataset, tokenizer, label2id, max_length=12, report=report, stride=3)
    assert len(encoded) > len(dataset)  # some sentences did need several windows
    assert report.counts["words_without_label"] == 0
    width = max(len(row) for row in encoded["labels"])
    labels = np.array([row + [IGNORE_INDEX] * (width - len(row)) for row in encoded["labels"]])
    gold, predicted = word_predictions(labels, labels, dict(enumerate(label_list)), encoded["example_id"])
    assert gold == dataset["tags"] and predicted == dataset["tags"]


def test_max_context_windows_label_each_word_where_it_is_most_central():
    # two windows of one sentence: words 0-4, then words 3-7 (words 3 and 4 in the overlap)
    windows = [[None, 0, 1, 2, 3, 4, None], [None, 3, 4, 5, 6, 7, None]]
    # word 3: context 1 in the first window (k=4, last=5), 0 in the second: first window. word 4: 0 vs 1: second
    assert max_context_windows(windows) == [{0, 1, 2, 3}, {4, 5, 6, 7}]


def test_word_predictions_map_back_to_words():
    labels = np.array([[IGNORE_INDEX, 0, IGNORE_INDEX, 1, IGNORE_INDEX]])
    logits = np.zeros((1, 5, 2))
    logits[0, 1, 1] = logits[0, 3, 1] = 1.0  # predicts tag 1 for both words
    gold, predicted = word_predictions(logits, labels, {0: "NOUN", 1: "VERB"})
    assert gold == [["NOUN", "VERB"]] and predicted == [["VERB", "VERB"]]


def test_lang_ids_for_meta_xlm_and_none_for_other_models():
    config = MetaXLMConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        languages=["en", "te"],
    )
    assert language_index(config, "te") == 1
    with pytest.raises(ValueError, match=r"no modules for language 'hi' \(its languages: \['en', 'te'\]\)"):
        language_index(config, "hi")
    assert language_index(config, "hi", fallback_language="en") == 0
    with pytest.raises(ValueError, match="fallback language 'fr' is not one of"):
        language_index(config, "hi", fallback_language="fr")
    assert language_index(XLMRobertaConfig(), "hi") is None


def test_collator_carries_lang_ids(tokenizer, shared_data):
    dataset = load_conllu(shared_data("ud", "UD_Telugu-MTG", "te_mtg-ud-dev.conllu.gz"), "te").select(
        range(3)
    )
    label2id = {tag: i for i, tag in enumerate(sorted({t for tags in dataset["tags"] for t in tags}))}
    encoded = tokenize_tagging(dataset, tokenizer, label2id, max_length=64, lang_id=1)
    batch = DataCollatorForTokenClassification(tokenizer)([encoded[i] for i in range(3)])
    assert batch["lang_ids"].tolist() == [1, 1, 1]
    assert batch["labels"].shape == batch["input_ids"].shape


def test_every_tydiqa_en_dev_answer_is_recovered_with_gold_logits(tokenizer, shared_data):
    """All 440 TyDiQA-GoldP en dev questions: windows (384 / stride 128) -> gold logits -> n-best -> text."""
    examples = load_squad_json(shared_data("qa", "tydiqa_goldp", "tydiqa-goldp-v1.1-dev-en.json.gz"), "en")
    report = DataReport()
    train_features = prepare_qa_train_features(examples, tokenizer, 384, 128, report=report)
    eval_features = prepare_qa_eval_features(examples, tokenizer, 384, 128)
    assert train_features["input_ids"] == eval_features["input_ids"]  # same windows, in the same order
    start_logits = np.full((len(eval_features), 384), -10.0)
    end_logits = np.full((len(eval_features), 384), -10.0)
    for row, (start, end) in enumerate(
        zip(train_features["start_positions"], train_features["end_positions"])
    ):
        if start != 0:
            start_logits[row, start], end_logits[row, end] = 10.0, 10.0
    predictions = postprocess_qa_predictions(
        examples, eval_features, start_logits, end_logits, max_answer_length=1000
    )
    not_token_aligned = 0
    for example in examples:
        gold, start = example["answers"]["text"][0], example["answers"]["answer_start"][0]
        predicted = predictions[example["id"]]
        if predicted != gold:
            # a gold boundary inside a subword: the recovered span is the smallest token span around it
            not_token_aligned += 1
            assert gold in predicted and len(predicted) - len(gold) <= 4, (predicted, gold)
            assert _splits_a_token(tokenizer, example["context"], start, start + len(gold))
    assert not_token_aligned <= 5  # 2 with this tokenizer ("ears"/"ars", "giants"/"giant")
    assert report.counts["windows_without_answer"] == sum(
        1 for s in train_features["start_positions"] if s == 0
    )


def _splits_a_token(tokenizer, context, start_char, end_char):
    offsets = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    starts = {s + (context[s] == " ") for s, e in offsets}
    ends = {e for s, e in offsets}
    return start_char not in starts or end_char not in ends


def test_qa_window_settings_are_checked(tokenizer, shared_data):
    examples = load_squad_json(shared_data("qa", "tydiqa_goldp", "tydiqa-goldp-v1.1-dev-te.json.gz"), "te")
    with pytest.raises(ValueError, match="doc_stride=64 must be < max_length - max_question_length - 4 = 60"):
        prepare_qa_eval_features(examples.select(range(2)), tokenizer, max_length=128, doc_stride=64)


def test_nli_pairs_and_labels(tokenizer, shared_data):
    dataset = load_xnli_tsv(shared_data("nli", "xnli", "dev-en.tsv.gz"), "en").select(range(4))
    encoded = tokenize_nli(dataset, tokenizer, max_length=128, lang_id=0)
    assert encoded["labels"] == dataset["label"]
    assert encoded["lang_ids"] == [0, 0, 0, 0]
    first = encoded[0]["input_ids"]
    assert first.count(tokenizer.eos_token_id) == 3  # <s> premise </s></s> hypothesis </s>
