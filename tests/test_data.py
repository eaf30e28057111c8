"""Tests of meta_xlm.data: corpora, sampling, subsampling, tokenizer, blocks and MLM masking."""

import gzip

import pytest
import torch
from transformers import AutoTokenizer

from meta_xlm.data import (
    CorpusError,
    MLMCollator,
    build_blocks,
    characters_per_token,
    load_corpora,
    load_language_corpus,
    split_corpora,
    split_validation,
    subsample_sentences,
    tokenization_statistics,
    train_shared_tokenizer,
)

# One file per script: Latin (en, sw), Arabic, Cyrillic, Devanagari, Telugu.
SCRIPT_FILES = {
    "en": "ud_ewt_train_text.txt.gz",
    "sw": "voa_swahili_lacuna.txt.gz",
    "ar": "ud_pud_TEST_text.txt.gz",
    "ru": "ud_taiga_train_text.txt.gz",
    "hi": "ilner_train_sentences_tokenized.txt.gz",
    "te": "ud_mtg_train_text.txt.gz",
}


@pytest.fixture(scope="module")
def real_corpora(tmp_path_factory):
    from conftest import shared_data_path

    paths = {lang: [str(shared_data_path("text", lang, name))] for lang, name in SCRIPT_FILES.items()}
    cache = tmp_path_factory.mktemp("cache")
    corpora = load_corpora(list(paths), corpus_paths=paths, cache_dir=str(cache))
    train, validation = split_corpora(
        corpora, validation_sentences=50, subsample={"en": 3000, "sw": 3000}, seed=7
    )
    return train, validation


@pytest.fixture(scope="module")
def tokenizer(real_corpora, tmp_path_factory):
    train, _ = real_corpora
    trained = train_shared_tokenizer(
        train, vocab_size=1499, temperature=1 / 0.7, num_sentences=6000, seed=3, show_progress=False
    )
    folder = tmp_path_factory.mktemp("tokenizer")
    trained.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def write_lines(path, lines, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ corpora, splits, subsampling


def test_subsampling_is_seeded_and_exact(tmp_path):
    corpus = load_language_corpus(
        "xx",
        [write_lines(tmp_path / "a.txt", [f"s{i}" for i in range(503)])],
        cache_dir=str(tmp_path / "cache"),
    )
    first = subsample_sentences(corpus, 101, seed=5, language="xx")["text"]
    again = subsample_sentences(corpus, 101, seed=5, language="xx")["text"]
    other = subsample_sentences(corpus, 101, seed=6, language="xx")["text"]
    assert len(first) == 101 and len(set(first)) == 101
    assert first == again and first != other
    with pytest.raises(CorpusError, match="'xx' to 504 sentences: it has 503"):
        subsample_sentences(corpus, 504, seed=5, language="xx")


def test_validation_split_is_disjoint_and_exact(tmp_path):
    corpus = load_language_corpus(
        "xx",
        [write_lines(tmp_path / "a.txt", [f"s{i}" for i in range(97)])],
        cache_dir=str(tmp_path / "cache"),
    )
    train, validation = split_validation(corpus, 13, seed=1, language="xx")
    assert len(validation) == 13 and len(train) == 84
    assert not set(train["text"]) & set(validation["text"])


def test_folder_reads_plain_and_gzip_skips_notes_and_blank_lines(tmp_path):
    folder = tmp_path / "sw"
    folder.mkdir()
    write_lines(folder / "a.txt", ["one", "", "  two  "])
    write_lines(folder / "b.txt.gz", ["three"], gz=True)
    write_lines(folder / "LICENSE_x.txt", ["not text"])
    corpus = load_language_corpus("sw", [folder], cache_dir=str(tmp_path / "cache"))
    assert corpus["text"] == ["one", "two", "three"]


def test_edited_file_is_reread_not_served_from_cache(tmp_path):
    path = write_lines(tmp_path / "a.txt", ["old"])
    cache = str(tmp_path / "cache")
    assert load_language_corpus("xx", [path], cache_dir=cache)["text"] == ["old"]
    write_lines(path, ["new"])
    assert load_language_corpus("xx", [path], cache_dir=cache)["text"] == ["new"]


def test_bad_inputs_raise_errors_naming_them(tmp_path):
    cache = str(tmp_path / "cache")
    with pytest.raises(CorpusError, match="missing.txt .*does not exist"):
        load_language_corpus("en", [tmp_path / "missing.txt"], cache_dir=cache)
    with pytest.raises(CorpusError, match="nofolder .*does not exist"):
        load_language_corpus("en", [tmp_path / "nofolder"], cache_dir=cache)
    empty = write_lines(tmp_path / "empty.txt", ["", "   "])
    with pytest.raises(CorpusError, match="language 'en' is empty"):
        load_language_corpus("en", [empty], cache_dir=cache)
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(b"this is not gzip data")
    with pytest.raises(CorpusError, match="broken.txt.gz"):
        load_language_corpus("en", [broken], cache_dir=cache)
    truncated = tmp_path / "truncated.txt.gz"
    truncated.write_bytes(gzip.compress(("word " * 5000).encode())[:-40])
    with pytest.raises(CorpusError, match="truncated.txt.gz"):
        load_language_corpus("en", [truncated], cache_dir=cache)
    (tmp_path / "text" / "en").mkdir(parents=True)
    write_lines(tmp_path / "text" / "en" / "a.txt", ["hello"])
    with pytest.raises(CorpusError, match="language 'te' has no data"):
        load_corpora(["en", "te"], text_dir=str(tmp_path / "text"), cache_dir=cache)


# ------------------------------------------------------------------ tokenizer


def test_tokenizer_ids_and_languages_match_the_model_defaults(tokenizer):
    assert (
        tokenizer.bos_token_id,
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    ) == (0, 1, 2, 3)
    assert tokenizer.mask_token_id == len(tokenizer) - 1 == 1498
    assert tokenizer.init_kwargs["languages"] == list(SCRIPT_FILES)
    assert tokenizer("hello")["input_ids"][0] == 0 and tokenizer("hello")["input_ids"][-1] == 2


def test_tokenizer_round_trips_every_script_without_unknown_tokens(tokenizer, real_corpora):
    _, validation = real_corpora
    for language, sentences in validation.items():
        for text in sentences["text"][:20]:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in ids, (language, text)
            assert tokenizer.decode(ids) == text, language
        # Merges learned for every script: far fewer tokens than UTF-8 bytes, even for Telugu (3 bytes/char).
        joined = " ".join(sentences["text"][:20])
        assert len(tokenizer(joined)["input_ids"]) < 0.6 * len(joined.encode()), language



def test_pre_tokenizer_keeps_combining_marks_with_their_letters_and_splits_other_text_as_gpt2(tokenizer, real_corpora):
    from tokenizers import pre_tokenizers

    pieces = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str
    # Telugu and Devanagari words: one piece each (GPT-2's pattern cut them at every vowel sign and virama).
    assert len(pieces("తెలుగు భాష")) == 2 and len(pieces("हिन्दी में")) == 2
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str
    _, validation = real_corpora
    for language in ("en", "sw", "ru"):  # no combining marks in this text: exactly byte-level BPE's default split
        for text in validation[language]["text"][:50]:
            assert pieces(text) == gpt2(text), (language, text)
    # Telugu text: less than half as many pieces as GPT-2's pattern cuts it into.
    telugu = " ".join(validation["te"]["text"][:20])
    assert len(pieces(telugu)) < 0.5 * len(gpt2(telugu))

# ------------------------------------------------------------------ blocks and masking


def test_tokenization_statistics_count_what_the_tokenizer_cuts(tokenizer, real_corpora):
    """The vocabulary recipe's statistics and the perplexity scale (characters per token) are one count: checked
    against the tokenizer's own pieces, and a script cut more finely (Telugu) gets fewer characters per token."""
    _, validation = real_corpora
    sentences = list(validation["te"]["text"])
    pieces = [tokenizer.tokenize(sentence) for sentence in sentences]
    statistics = tokenization_statistics(tokenizer, sentences)
    assert statistics["sentences"] == 50 and statistics["unk_rate"] == 0
    assert statistics["chars_per_token"] == pytest.approx(sum(map(len, sentences)) / sum(map(len, pieces)))
    assert statistics["distinct_tokens"] == len({piece for row in pieces for piece in row})
    assert statistics["tokens_per_word"] > 1
    scales = characters_per_token(tokenizer, {language: validation[language] for language in ("en", "te")})
    assert scales["te"] == statistics["chars_per_token"] < scales["en"]
    with pytest.raises(ValueError, match="language 'te': 1 sentences tokenize to no token"):
        characters_per_token(tokenizer, {"te": validation["te"].select([0]).map(lambda row: {"text": ""})})


def test_blocks_are_fixed_length_streams_with_language_ids(tokenizer, real_corpora):
    train, validation = real_corpora
    languages = list(SCRIPT_FILES)
    data = build_blocks(train, validation, tokenizer, languages, block_size=37, temperature=1 / 0.7)
    assert set(data.validation) == set(languages)
    assert sum(data.sampling_probabilities.values()) == pytest.approx(1.0)
    lang_ids = data.train["lang_ids"]
    assert sorted(set(lang_ids)) == list(range(len(languages)))
    for row in (0, len(data.train) - 1):
        block = data.train[row]["input_ids"]
        assert len(block) == 37 and block[0] == tokenizer.bos_token_id
    # every validation block of language i says i
    for lang_id, language in enumerate(languages):
        assert set(data.validation[language]["lang_ids"]) == {lang_id}


def test_masking_statistics_on_real_text(tokenizer, real_corpora):
    train, validation = real_corpora
    data = build_blocks(train, validation, tokenizer, list(SCRIPT_FILES), block_size=64, temperature=1.0)
    collator = MLMCollator(tokenizer)
    examples = [data.train[i] for i in range(0, len(data.train), max(1, len(data.train) // 400))][:400]
    batch = collator(examples)
    original = torch.tensor([example["input_ids"] for example in examples])
    labels, inputs = batch["labels"], batch["input_ids"]
    assert batch["lang_ids"].tolist() == [example["lang_ids"] for example in examples]
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    selected = labels != -100
    assert not (selected & special).any(), "a special token was selected for masking"
    assert torch.equal(inputs[special], original[special])
    assert torch.equal(labels[selected], original[selected])
    assert torch.equal(inputs[~selected], original[~selected])
    n_selected = selected.sum().item()
    assert n_selected / (~special).sum().item() == pytest.approx(0.15, abs=0.01)
    masked_share = (inputs[selected] == tokenizer.mask_token_id).float().mean().item()
    kept_share = (inputs[selected] == original[selected]).float().mean().item()
    assert masked_share == pytest.approx(0.8, abs=0.03)
    assert kept_share == pytest.approx(
        0.1 + 0.1 / len(tokenizer), abs=0.03
    )  # 10% kept (+ random hits itself)
    random_share = 1 - masked_share - kept_share
    assert random_share == pytest.approx(0.1, abs=0.03)
    replaced = selected & (inputs != tokenizer.mask_token_id) & (inputs != original)
    assert not torch.isin(inputs[replaced], torch.tensor(tokenizer.all_special_ids)).any()
    assert batch["attention_mask"].all()


def test_collator_pads_short_examples_and_never_masks_padding(tokenizer):
    collator = MLMCollator(tokenizer, mlm_probability=1.0)
    batch = collator([{"input_ids": [0, 50, 51, 2], "lang_ids": 1}, {"input_ids": [0, 60], "lang_ids": 0}])
    assert batch["input_ids"].shape == (2, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist()[1] == [-100, 60, -100, -100]
    assert batch["labels"].tolist()[0] == [-100, 50, 51, -100]
    assert batch["lang_ids"].tolist() == [1, 0]


def test_masks_are_a_function_of_seed_and_batch_not_of_global_rng(tokenizer):
    """A resumed run re-collates batches after restoring RNG state: masks must not depend on that state."""
    examples = [{"input_ids": [0, *range(10, 60), 2], "lang_ids": 0} for _ in range(3)]
    torch.manual_seed(1)
    first = MLMCollator(tokenizer, seed=5)(examples)
    torch.manual_seed(2)
    again = MLMCollator(tokenizer, seed=5)(examples)
    other_seed = MLMCollator(tokenizer, seed=6)(examples)
    assert torch.equal(first["labels"], again["labels"]) and torch.equal(
        first["input_ids"], again["input_ids"]
    )
    assert not torch.equal(first["labels"], other_seed["labels"])


def test_collator_names_the_language_of_one_language_batches_only(tokenizer):
    """With the model's languages, a one-language batch carries `single_language` (the model then routes it
    without reading lang_ids, which keeps a compiled forward whole); a mixed batch does not."""
    collator = MLMCollator(tokenizer, languages=["en", "sw"])
    one = [{"input_ids": [0, *range(10, 20), 2], "lang_ids": 1} for _ in range(3)]
    mixed = [*one, {"input_ids": [0, *range(10, 20), 2], "lang_ids": 0}]
    assert collator(one)["single_language"] == "sw"
    assert "single_language" not in collator(mixed)
    assert "single_language" not in MLMCollator(tokenizer)(one)
