"""Loaders of the downstream suite on the real benchmark files, and their errors on malformed input."""

import gzip

import datasets
import pytest

from meta_xlm.tasks.splits import load_task_split, resolve_data_file
from meta_xlm.tasks.loaders import (
    NLI_LABELS,
    PANX_TAGS,
    QA_FEATURES,
    TAGGING_FEATURES,
    UPOS_TAGS,
    DataFormatError,
    DataReport,
    label_inventory,
    load_conllu,
    load_squad_json,
    load_token_tag_file,
    load_xnli_tsv,
    nli_from_hub_layout,
    qa_from_hub_layout,
    tagging_from_hub_layout,
)


def data_dir(shared_data):
    return shared_data("README.md").parent


@pytest.mark.parametrize(
    "task, language, split, expected",
    [
        ("pos", "te", "train", 1051),  # UD_Telugu-MTG
        ("pos", "te", "dev", 131),
        ("pos", "te", "test", 146),
        ("pos", "en", "dev", 2001),  # UD_English-EWT
        ("pos", "ar", "train", 6075),  # XTREME udpos TSV
        ("pos", "hi", "dev", 1659),
        ("pos", "sw", "train", 693),  # MasakhaPOS, space separated
        ("ner", "te", "train", 1000),  # PAN-X
        ("ner", "hi", "dev", 1000),
        ("qa", "en", "dev", 440),  # TyDiQA-GoldP
        ("qa", "te", "dev", 669),
        ("qa", "sw", "train", 2755),
        ("nli", "sw", "dev", 2490),  # XNLI
    ],
)
def test_split_sizes_match_the_data_readme(shared_data, task, language, split, expected):
    dataset = load_task_split(task, language, split, data_dir(shared_data))
    assert len(dataset) == expected
    assert set(dataset["language"]) == {language}


def test_conllu_words_and_upos_inventory(shared_data):
    train = load_conllu(shared_data("ud", "UD_Telugu-MTG", "te_mtg-ud-train.conllu.gz"), "te")
    assert train.features == TAGGING_FEATURES
    assert sum(len(tokens) for tokens in train["tokens"]) == 5082  # words of te_mtg train (no MWTs in MTG)
    assert train[0]["tokens"] == ["చూసేరా", "అండీ", "?"] and train[0]["tags"] == ["VERB", "PART", "PUNCT"]
    assert set(label_inventory(train, first=None)) <= set(UPOS_TAGS)


def test_conllu_multiword_ranges_and_empty_nodes_follow_ud(tmp_path):
    lines = [
        "# text = Today's fine",
        "1-2\tToday's\t_\t_\t_\t_\t_\t_\t_\t_",
        "1\tToday\ttoday\tNOUN\tNN\t_\t3\tnsubj\t_\t_",
        "2\t's\tbe\tAUX\tVBZ\t_\t3\tcop\t_\t_",
        "3\tfine\tfine\tADJ\tJJ\t_\t0\troot\t_\t_",
        "3.1\tis\tbe\tAUX\tVBZ\t_\t_\t_\t3:cop\tCopyOf=2",
        "",
    ]
    path = tmp_path / "mwt.conllu"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dataset = load_conllu(path, "en")
    assert dataset[0]["tokens"] == ["Today", "'s", "fine"]
    assert dataset[0]["tags"] == ["NOUN", "AUX", "ADJ"]


def test_ewt_counts_words_not_multiword_tokens(shared_data):
    dev = load_conllu(shared_data("ud", "UD_English-EWT", "en_ewt-ud-dev.conllu.gz"), "en")
    assert sum(len(tokens) for tokens in dev["tokens"]) == 25147  # SOURCES.md: 25147 tokens (syntactic words)


def test_panx_tags_and_gzip_equals_plain(shared_data, tmp_path):
    path = shared_data("ner", "panx_xtreme", "dev-te.tsv.gz")
    dev = load_token_tag_file(path, "te", "iob2", PANX_TAGS)
    assert label_inventory(dev) == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]
    plain = tmp_path / "dev-te.tsv"
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    assert load_token_tag_file(plain, "te", "iob2", PANX_TAGS)["tags"] == dev["tags"]


def test_masakhaner_has_its_own_label_set(shared_data):
    train = load_token_tag_file(shared_data("ner", "masakhaner2_swa", "train.txt.gz"), "sw", "iob2")
    assert len(train) == 6593
    assert label_inventory(train) == [
        "O",
        "B-DATE",
        "B-LOC",
        "B-ORG",
        "B-PER",
        "I-DATE",
        "I-LOC",
        "I-ORG",
        "I-PER",
    ]


def test_il_ner_malformed_tags_raise_unless_mapped_to_o(shared_data):
    path = shared_data("ner", "il_ner", "Telugu", "train.txt.gz")
    with pytest.raises(DataFormatError, match=r"train\.txt\.gz, line 1: tag '-NEL' is not IOB2"):
        load_token_tag_file(path, "te", "iob2")
    report = DataReport()
    train = load_token_tag_file(path, "te", "iob2", map_malformed_to_o=True, report=report)
    assert len(train) == 2993
    # -NEL 579, -NEP 222, -NETI 127, -NEO 54, - 47, -NEAR 40, -doubt, -NEU, -NEN, -'' (counted with awk)
    assert report.counts["malformed_tags_mapped_to_O"] == 1073
    assert "B-NEP" in label_inventory(train) and "PER" not in " ".join(label_inventory(train))


def test_il_ner_hindi_line_without_tag_is_counted(shared_data):
    report = DataReport()
    train = load_token_tag_file(
        shared_data("ner", "il_ner", "Hindi", "train.txt.gz"),
        "hi",
        "iob2",
        map_malformed_to_o=True,
        report=report,
    )
    assert len(train) == 11076
    # 150 tags like "-" / "-NEL" plus line 213885, which has a token and no tag
    assert report.counts["malformed_tags_mapped_to_O"] == 151
    # nothing dropped: every non-blank line (262856 with two fields + that one) is a word
    assert sum(len(tags) for tags in train["tags"]) == 262856 + 1


def test_token_line_without_tag_names_file_and_line(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text("Ada\tB-PER\nLovelace\n\n", encoding="utf-8")
    with pytest.raises(
        DataFormatError, match=r"ner\.txt, line 2: expected 'token<TAB>tag', got one field 'Lovelace'"
    ):
        load_token_tag_file(path, "en", "iob2")


def test_squad_json_schema_and_answers(shared_data):
    dev = load_squad_json(shared_data("qa", "tydiqa_goldp", "tydiqa-goldp-v1.1-dev-en.json.gz"), "en")
    assert dev.features == QA_FEATURES and len(dev) == 440
    for example in dev:
        assert 1 <= len(example["answers"]["text"]) <= 2
        for text, start in zip(example["answers"]["text"], example["answers"]["answer_start"]):
            assert example["context"][start : start + len(text)] == text


def test_xquad_and_mlqa_load(shared_data):
    assert len(load_squad_json(shared_data("qa", "xquad", "xquad.hi.json.gz"), "hi")) == 1190
    assert len(load_squad_json(shared_data("qa", "mlqa", "dev-context-ar-question-ar.json.gz"), "ar")) == 517


def test_xnli_labels_balanced(shared_data):
    dev = load_xnli_tsv(shared_data("nli", "xnli", "dev-hi.tsv.gz"), "hi")
    assert dev.features["label"].names == NLI_LABELS
    assert [dev["label"].count(i) for i in range(3)] == [830, 830, 830]


# ------------------------------------------------------------------------------------------- bad input


def test_conllu_wrong_column_count_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conllu"
    path.write_text(
        "# sent_id = 1\n1\tA\ta\tDET\t_\t_\t0\troot\t_\t_\n2\tdog\tdog\tNOUN\t_\t_\t1\n\n", encoding="utf-8"
    )
    with pytest.raises(
        DataFormatError, match=r"bad\.conllu, line 3: expected 10 TAB-separated CoNLL-U columns, got 7"
    ):
        load_conllu(path, "en")


def test_conllu_unknown_upos(tmp_path):
    path = tmp_path / "bad.conllu"
    path.write_text("1\tA\ta\tDT\t_\t_\t0\troot\t_\t_\n\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="line 1: UPOS 'DT'"):
        load_conllu(path, "en")


def test_squad_answer_offset_mismatch_names_question(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(
        '{"data": [{"title": "t", "paragraphs": [{"context": "Paris is in France.", "qas": ['
        '{"id": "q1", "question": "Where?", "answers": [{"text": "France", "answer_start": 3}]}]}]}]}',
        encoding="utf-8",
    )
    with pytest.raises(
        DataFormatError, match=r"bad\.json: .*question id 'q1': answer 'France' is not at answer_start=3"
    ):
        load_squad_json(path, "en")


def test_xnli_unknown_label_names_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("A man.\tA person.\tentailment\nA dog.\tA cat.\tcontradictory\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.tsv, line 2: label 'contradictory' is not one of"):
        load_xnli_tsv(path, "en")


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no pos train split for language 'hi'"):
        resolve_data_file("pos", "hi", "train", tmp_path)
    with pytest.raises(ValueError, match="no qa data for language 'fr'"):
        resolve_data_file("qa", "fr", "dev", tmp_path)
    with pytest.raises(ValueError, match="no data_dir to read the ner test split of 'sw'.*META_XLM_DATA"):
        resolve_data_file("ner", "sw", "test", None)  # the library has no checkout-relative default


# ------------------------------------------------------------------------------------------- Hub layout


def test_hub_layouts_convert_to_the_schemas():
    wikiann = datasets.Dataset.from_dict(
        {"tokens": [["Ada", "Lovelace", "wrote"]], "ner_tags": [[1, 2, 0]]},
        features=datasets.Features(
            {
                "tokens": datasets.List(datasets.Value("string")),
                "ner_tags": datasets.List(datasets.ClassLabel(names=PANX_TAGS)),
            }
        ),
    )
    converted = tagging_from_hub_layout(wikiann, "en", "ner_tags")
    assert converted.features == TAGGING_FEATURES and converted[0]["tags"] == ["B-PER", "I-PER", "O"]
    xnli = datasets.Dataset.from_dict(
        {"premise": ["p"], "hypothesis": ["h"], "label": [2]},
        features=datasets.Features(
            {
                "premise": datasets.Value("string"),
                "hypothesis": datasets.Value("string"),
                "label": datasets.ClassLabel(names=NLI_LABELS),
            }
        ),
    )
    assert nli_from_hub_layout(xnli, "fr")[0]["label"] == 2


def test_squad_hub_layout_converts():
    hub = datasets.Dataset.from_list([
        {"id": "q1", "title": "T", "context": "Paris is in France.", "question": "Where?",
         "answers": {"text": ["France"], "answer_start": [12]}},
    ])  # fmt: skip
    converted = qa_from_hub_layout(hub, "en")
    assert converted.features == QA_FEATURES
    assert converted[0]["answers"] == {"text": ["France"], "answer_start": [12]}
    assert converted[0]["language"] == "en"
