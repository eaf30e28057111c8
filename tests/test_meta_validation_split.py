"""+meta adpt's meta objective reads its own held-out text, never the evaluation or training text (issue 11)."""

import pytest
from datasets import Dataset

from meta_xlm.data import CorpusError, hold_out_meta_validation, split_corpora


def corpus(language: str, size: int) -> Dataset:
    # every 7th line repeats an earlier one, as corpora do (boilerplate, short sentences)
    lines = [f"{language} sentence {i % 7 if i % 7 == 0 else i}" for i in range(size)]
    return Dataset.from_dict({"text": lines})


def test_meta_validation_is_disjoint_from_evaluation_and_training_text_by_content():
    corpora = {"en": corpus("en", 300), "te": corpus("te", 200)}
    rest, meta_validation = hold_out_meta_validation(corpora, meta_validation_sentences=40, seed=3)
    train, validation = split_corpora(rest, validation_sentences=30, subsample={"en": 100}, seed=3)
    for language in corpora:
        meta_text = set(meta_validation[language]["text"])
        assert len(meta_validation[language]) == 40
        assert not meta_text & set(validation[language]["text"]), language
        assert not meta_text & set(train[language]["text"]), language
        assert len(validation[language]) == 30
    assert len(train["en"]) == 100
    # the repeated line: held out for the meta objective in at least one language, then absent everywhere else
    assert any(f"{code} sentence 0" in set(meta_validation[code]["text"]) for code in corpora)
    # deterministic in the seed
    _, again = hold_out_meta_validation(corpora, meta_validation_sentences=40, seed=3)
    assert again["en"]["text"] == meta_validation["en"]["text"]


def test_meta_validation_size_is_checked():
    with pytest.raises(CorpusError, match="meta_validation_sentences=0"):
        hold_out_meta_validation({"en": corpus("en", 10)}, meta_validation_sentences=0, seed=0)
