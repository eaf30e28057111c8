"""XTREME submission layout (meta_xlm.tasks.xtreme): file names, one tag per word, QA {id: answer} JSON."""

import json

import datasets
import numpy as np
import pytest

from meta_xlm.tasks.xtreme import write_xtreme_predictions, xtreme_prediction_path

IGNORE = -100


def test_prediction_paths_follow_xtremes_task_folders(tmp_path):
    assert xtreme_prediction_path(tmp_path, "ner", "sw") == tmp_path / "panx" / "test-sw.tsv"
    assert xtreme_prediction_path(tmp_path, "pos", "te") == tmp_path / "udpos" / "test-te.tsv"
    assert xtreme_prediction_path(tmp_path, "nli", "ar") == tmp_path / "xnli" / "test-ar.tsv"
    assert xtreme_prediction_path(tmp_path, "qa", "ru") == tmp_path / "tydiqa" / "test-ru.json"


def test_tagging_file_has_one_tag_per_word_and_a_blank_line_per_sentence(tmp_path):
    labels = ["O", "B-PER", "I-PER"]
    examples = datasets.Dataset.from_dict({"tokens": [["Ana", "went"], ["to", "Dar", "es", "Salaam"]]})
    # sentence 2 was truncated after its 2nd word; label_ids mark first subwords (others IGNORE)
    predictions = np.array([[0, 1, 5, 0, 0], [0, 0, 2, 2, 0]])
    label_ids = np.array([[IGNORE, 1, IGNORE, 0, IGNORE], [IGNORE, 0, 1, IGNORE, IGNORE]])
    path = write_xtreme_predictions(tmp_path, "ner", "sw", examples, examples, predictions, label_ids, labels)
    assert path.read_text(encoding="utf-8") == "B-PER\nO\n\nO\nI-PER\nO\nO\n\n"


def test_a_sentence_split_into_windows_is_joined_back(tmp_path):
    labels = ["O", "B-PER", "I-PER"]
    examples = datasets.Dataset.from_dict({"tokens": [["Ana"], ["to", "Dar", "es", "Salaam"]]})
    # sentence 2 in two windows: words 1-2 labelled in the first, words 3-4 in the second (tokenize_tagging's stride)
    features = datasets.Dataset.from_dict({"example_id": [0, 1, 1]})
    predictions = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 2, 2, 0]])
    label_ids = np.array([[IGNORE, 1, IGNORE, IGNORE], [IGNORE, 0, 1, IGNORE], [IGNORE, 2, 2, IGNORE]])
    path = write_xtreme_predictions(tmp_path, "ner", "sw", examples, features, predictions, label_ids, labels)
    assert path.read_text(encoding="utf-8") == "B-PER\n\nO\nB-PER\nI-PER\nI-PER\n\n"


def test_tagging_needs_one_prediction_row_per_sentence(tmp_path):
    examples = datasets.Dataset.from_dict({"tokens": [["a"], ["b"]]})
    with pytest.raises(ValueError, match="1 predicted sentences for 2 test sentences"):
        write_xtreme_predictions(tmp_path, "pos", "te", examples, examples, np.zeros((1, 3)), np.zeros((1, 3)), ["X"])


def test_nli_and_qa_files(tmp_path):
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 0.0, 0.0]])
    labels = ["entailment", "neutral", "contradiction"]
    path = write_xtreme_predictions(tmp_path, "nli", "sw", None, None, logits, None, labels)
    assert path.read_text() == "neutral\nentailment\n"
    examples = datasets.Dataset.from_dict({"id": ["q1"], "context": ["abc déf"]})
    features = datasets.Dataset.from_dict({"example_id": ["q1"], "offset_mapping": [[None, [0, 3], [3, 7]]]})
    start, end = np.array([[5.0, 0.0, 3.0]]), np.array([[5.0, 0.0, 3.0]])
    path = write_xtreme_predictions(tmp_path, "qa", "te", examples, features, (start, end), None, [])
    assert json.loads(path.read_text(encoding="utf-8")) == {"q1": "déf"}
