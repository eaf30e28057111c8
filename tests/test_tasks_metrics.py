"""Offline metrics against values computed by hand."""

import pytest

from meta_xlm.tasks.metrics import accuracy, ner_scores, normalize_answer, pos_scores, squad_f1, squad_scores


def test_ner_span_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    # gold spans: PER(0-1), LOC(3), ORG(0); predicted: PER(0-1), ORG(3), ORG(0); 2 of 3 correct both ways
    scores = ner_scores(gold, predicted)
    assert scores["precision"] == pytest.approx(200 / 3)
    assert scores["recall"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(200 / 3)


def test_ner_i_without_b_starts_an_entity():
    # conlleval semantics: "I-PER I-PER" is one PER span, so it matches gold "B-PER I-PER" exactly.
    assert ner_scores([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]])["f1"] == pytest.approx(100.0)
    # "I-LOC" after a PER span starts a LOC span: predicted PER(0) + LOC(1) vs gold PER(0-1) -> 0 correct.
    assert ner_scores([["B-PER", "I-PER"]], [["B-PER", "I-LOC"]])["f1"] == 0.0


def test_ner_boundary_error_counts_as_wrong():
    scores = ner_scores([["B-LOC", "I-LOC", "O"]], [["B-LOC", "O", "O"]])
    assert scores["f1"] == 0.0


def test_pos_f1_is_xtreme_seqeval_f1_and_accuracy_is_kept():
    # XTREME's POS F1: a run of equal tags is one span. Gold NOUN(0-1) VERB(2); predicted NOUN(0) VERB(1-2):
    # no span matches, though 2 of 3 words are right.
    scores = pos_scores([["NOUN", "NOUN", "VERB"]], [["NOUN", "VERB", "VERB"]])
    assert scores["f1"] == 0.0 and scores["accuracy"] == pytest.approx(200 / 3)
    # gold DET(0) NOUN(1-2) PUNCT(3); predicted DET NOUN(1) ADJ(2) PUNCT: one wrong word breaks its whole run.
    # 2 spans right: precision 2/4, recall 2/3, F1 = 4/7.
    scores = pos_scores([["DET", "NOUN", "NOUN", "PUNCT"]], [["DET", "NOUN", "ADJ", "PUNCT"]])
    assert scores["f1"] == pytest.approx(400 / 7) and scores["accuracy"] == 75.0
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
        pos_scores([["A", "B"]], [["A"]])


@pytest.mark.filterwarnings("ignore:.* seems not to be NE tag:UserWarning")  # seqeval on UPOS tags, as XTREME
def test_pos_f1_equals_seqeval_on_real_tag_sequences(shared_data):
    """MasakhaPOS sw dev tags against a deterministic corruption of them (every 7th word -> NOUN)."""
    from seqeval.metrics import f1_score

    from meta_xlm.tasks.loaders import load_token_tag_file

    path = shared_data("pos", "masakhapos_swa", "dev.txt.gz")
    gold = load_token_tag_file(path, "sw", "upos")["tags"]
    predicted = [[("NOUN" if (i + len(tags)) % 7 == 0 else t) for i, t in enumerate(tags)] for tags in gold]
    scores = pos_scores(gold, predicted)
    assert scores["f1"] == pytest.approx(100 * f1_score(gold, predicted))
    assert abs(scores["f1"] - scores["accuracy"]) > 1.0  # the two metrics do differ on real data


def test_accuracy():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2])["accuracy"] == pytest.approx(75.0)


def test_normalisation_drops_arabic_punctuation():
    # "،" (U+060C) and "؟" (U+061F) are Unicode punctuation; the official SQuAD script keeps them.
    assert normalize_answer("باريس، فرنسا؟", "ru") == ["باريس", "فرنسا"]
    assert squad_f1("باريس،", "باريس", "sw") == 1.0


def test_normalisation_drops_devanagari_danda():
    # "।" (U+0964) ends Hindi sentences; "॥" (U+0965) too.
    assert normalize_answer("नई दिल्ली।", "hi") == ["नई", "दिल्ली"]
    assert normalize_answer("राम॥", "hi") == ["राम"]


def test_language_specific_articles():
    assert normalize_answer("The Eiffel Tower", "en") == ["eiffel", "tower"]
    assert normalize_answer("The Eiffel Tower", "ru") == ["the", "eiffel", "tower"]  # no articles for ru
    assert normalize_answer("die Mauer", "de") == ["mauer"]
    assert normalize_answer("الكتاب", "ar") == ["كتاب"]
    assert normalize_answer("北京大学", "zh") == ["北", "京", "大", "学"]


def test_squad_scores_by_hand():
    references = {"q1": ["the big cat"], "q2": ["Paris", "Paris, France"], "q3": ["blue"]}
    predictions = {"q1": "big dog", "q2": "Paris, France.", "q3": "red"}
    # q1: tokens [big, dog] vs [big, cat]: P = R = 1/2 -> F1 0.5, EM 0; q2: exact match with answer 2; q3: 0.
    scores = squad_scores(predictions, references, "en")
    assert scores["f1"] == pytest.approx(100 * 1.5 / 3)
    assert scores["exact_match"] == pytest.approx(100 / 3)


def test_squad_missing_prediction_counts_zero_and_unknown_id_fails():
    assert squad_scores({}, {"q1": ["a"]}, "en") == {"f1": 0.0, "exact_match": 0.0}
    with pytest.raises(ValueError, match="no reference question"):
        squad_scores({"q9": "x"}, {"q1": ["a"]}, "en")
