"""Pretraining data: per-language corpora, a shared BPE tokenizer, language sampling, XLM-style MLM batches.

The pipeline (Section 3.2 of the paper, following XLM, Lample & Conneau 2019):

1. `load_language_corpus` reads one language's text (local files/folders, plain or .gz, one sentence per line;
   or a Hub dataset) into a memory-mapped Arrow `datasets.Dataset` with a "text" column, so memory does not
   grow with corpus size. `hold_out_meta_validation` first holds out +meta adpt's meta-validation split (the
   meta objective's text, kept out of training and evaluation text by content); `split_validation` holds out a
   seeded validation (evaluation) split; `subsample_sentences` keeps
   exactly N training sentences (the paper's "frl"/"rul": fr/ru subsampled to 100k sentences).
2. `train_shared_tokenizer` learns one byte-level BPE vocabulary over all languages from a temperature-balanced
   sample of their training text and returns a `PreTrainedTokenizerFast` with XLM-R's special tokens and ids
   (<s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last), which is what `MetaXLMConfig` defaults to.
   Byte-level (GPT-2/RoBERTa style) is chosen so that every string round-trips exactly and no input ever maps
   to <unk>, whichever script it is in; characters frequent in training become single tokens by merges. Its
   word pattern keeps combining marks with their letters, so Indic words can merge whole (`WORD_PATTERN`).
3. `tokenize_into_blocks` turns a language's sentences into XLM-style streams: sentences joined by </s>,
   cut into fixed-length blocks that start with <s>; every example carries `lang_ids` (index into
   `config.languages`). `meta_xlm.sampling.language_sampling_probabilities` gives p_i ∝ (L_i / Σ_j L_j)^(1/T).
4. `MLMCollator` masks 15% of the non-special tokens with BERT's 80/10/10 rule.

`load_corpora`, `split_corpora` and `build_blocks` run 1-3 for a list of languages and return
`PretrainingData`, what `MetaXLMTrainer` takes.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets, load_dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .sampling import language_sampling_probabilities

logger = logging.getLogger(__name__)

# XLM-R's special tokens, in id order: these ids are MetaXLMConfig's bos/pad/eos defaults.
BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, MASK_TOKEN = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
SPECIAL_TOKENS = (BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
# Corpus folders ship license and readme notes beside the text (e.g. ../shared/data/text/en/LICENSE_*.txt).
NON_CORPUS_PREFIXES = ("readme", "license")
CORPUS_SUFFIXES = (".txt", ".txt.gz")


class CorpusError(ValueError):
    """Bad pretraining input (missing/empty/unreadable corpus), raised before any training starts."""


# ---------------------------------------------------------------------------------------------- corpora


def resolve_corpus_files(language: str, paths: Sequence[str | Path]) -> list[Path]:
    """The text files of one language: each path is a file, or a folder whose *.txt / *.txt.gz files are read.

    Files are sorted by name inside a folder so the corpus order (and every seeded split) is reproducible.
    """
    if not paths:
        raise CorpusError(f"language {language!r} has no corpus path: give a file or folder for it")
    files: list[Path] = []
    for raw_path in paths:
        path = Path(raw_path)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(
                child
                for child in path.iterdir()
                if child.is_file()
                and child.name.endswith(CORPUS_SUFFIXES)
                and not child.name.lower().startswith(NON_CORPUS_PREFIXES)
            )
            if not found:
                raise CorpusError(
                    f"corpus folder {path} (language {language!r}) has no text file: expected files ending in "
                    f"{' or '.join(CORPUS_SUFFIXES)} (README*/LICENSE* files are skipped)"
                )
            files.extend(found)
        else:
            raise CorpusError(f"corpus path {path} (language {language!r}) does not exist")
    return files


def _open_text(path: Path):
    # gzip.open checks the magic bytes lazily; errors surface on the first read, which callers wrap.
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def corpus_fingerprint(files: Sequence[Path]) -> tuple[str, int]:
    """(sha256 of the decompressed content of `files` in order, number of non-blank lines).

    Reading every file once proves it is readable UTF-8 text (a corrupt or truncated gzip fails here, before
    training). `Dataset.from_generator` caches by its arguments, not by file content: the hash goes into its
    arguments so an edited corpus is re-read.
    """
    digest = hashlib.sha256()
    non_blank_lines = 0
    for path in files:
        digest.update(str(path.name).encode())
        try:
            with _open_text(path) as handle:
                for line in handle:
                    digest.update(line.encode("utf-8"))
                    non_blank_lines += bool(line.strip())
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
            raise CorpusError(
                f"cannot read corpus file {path}: {error} (expected UTF-8 text, plain or gzip)"
            ) from error
    return digest.hexdigest(), non_blank_lines


def _iter_sentences(files: list[str], fingerprint: str) -> Iterator[dict[str, str]]:
    """Non-empty stripped lines of `files`; `fingerprint` is unused here but keys the datasets cache."""
    for name in files:
        with _open_text(Path(name)) as handle:
            for line in handle:
                sentence = line.strip()
                if sentence:
                    yield {"text": sentence}


def load_language_corpus(language: str, paths: Sequence[str | Path], cache_dir: str | None = None) -> Dataset:
    """One language's sentences as an Arrow dataset with a "text" column (memory-mapped, not held in RAM)."""
    files = resolve_corpus_files(language, paths)
    fingerprint, non_blank_lines = corpus_fingerprint(files)
    if non_blank_lines == 0:
        raise CorpusError(f"language {language!r} is empty: no non-blank line in {[str(p) for p in files]}")
    dataset = Dataset.from_generator(
        _iter_sentences,
        gen_kwargs={"files": [str(path) for path in files], "fingerprint": fingerprint},
        cache_dir=cache_dir,
    )
    logger.info("corpus %s: %d sentences from %d file(s)", language, len(dataset), len(files))
    return dataset


def load_hub_corpus(
    language: str, dataset_id: str, config_name: str | None, split: str = "train", text_column: str = "text"
) -> Dataset:
    """One language's text from a Hub dataset (e.g. "wikimedia/wikipedia", config "20231101.sw").

    Map-style (downloaded once into the Arrow cache and memory-mapped), so the training sampler can index it.
    Rows (e.g. whole articles) are split into their non-blank lines (paragraphs), like local files.
    """
    dataset = load_dataset(dataset_id, config_name, split=split)
    if text_column not in dataset.column_names:
        raise CorpusError(
            f"Hub dataset {dataset_id} ({config_name}) has no column {text_column!r} for language {language!r}; "
            f"columns are {dataset.column_names}"
        )
    dataset = dataset.select_columns([text_column]).rename_column(text_column, "text")
    dataset = dataset.map(
        _split_lines, batched=True, remove_columns=["text"], desc=f"splitting {language} lines"
    )
    if len(dataset) == 0:
        raise CorpusError(f"language {language!r} is empty in Hub dataset {dataset_id} ({config_name})")
    return dataset


def _split_lines(batch: dict[str, list[str]]) -> dict[str, list[str]]:
    return {"text": [line.strip() for text in batch["text"] for line in text.splitlines() if line.strip()]}


def split_validation(
    dataset: Dataset, validation_sentences: int, seed: int, language: str
) -> tuple[Dataset, Dataset]:
    """Hold out exactly `validation_sentences` sentences, chosen with `seed`; returns (train, validation)."""
    if validation_sentences < 1 or validation_sentences >= len(dataset):
        raise CorpusError(
            f"language {language!r} has {len(dataset)} sentences: cannot hold out validation_sentences="
            f"{validation_sentences} (need 1 <= validation_sentences < corpus size)"
        )
    order = np.random.default_rng(seed).permutation(len(dataset))
    validation = dataset.select(np.sort(order[:validation_sentences]))
    train = dataset.select(np.sort(order[validation_sentences:]))
    return train, validation


def subsample_sentences(dataset: Dataset, num_sentences: int, seed: int, language: str) -> Dataset:
    """Exactly `num_sentences` sentences drawn without replacement with `seed` (paper: frl/rul, 100k)."""
    if not 1 <= num_sentences <= len(dataset):
        raise CorpusError(
            f"cannot subsample language {language!r} to {num_sentences} sentences: it has {len(dataset)}"
        )
    chosen = np.random.default_rng(seed).choice(len(dataset), size=num_sentences, replace=False)
    return dataset.select(np.sort(chosen))


# ---------------------------------------------------------------------------------------------- tokenizer


def temperature_balanced_sample(
    corpora: Mapping[str, Dataset], temperature: float, num_sentences: int, seed: int
) -> Iterator[str]:
    """`num_sentences` sentences in all, language i drawn with p_i (with replacement, so small languages
    count as often as their share says), yielded language by language: BPE's pair counts ignore order."""
    probabilities = language_sampling_probabilities(
        {lang: len(ds) for lang, ds in corpora.items()}, temperature
    )
    rng = np.random.default_rng(seed)
    languages = list(corpora)
    language_of_each = rng.choice(
        len(languages), size=num_sentences, p=[probabilities[lang] for lang in languages]
    )
    for position, language in enumerate(languages):
        count = int((language_of_each == position).sum())
        indices = np.sort(rng.integers(0, len(corpora[language]), size=count))
        for start in range(0, count, 1000):
            yield from corpora[language].select(indices[start : start + 1000])["text"]


# The pre-tokenizer's word pattern: GPT-2's (byte-level BPE's default) with combining marks (\p{M}) kept with the
# letters they modify. GPT-2's `\p{L}+` cuts an Indic word at every vowel sign and virama ("తెలుగు" is 6 pieces), and
# BPE never merges across pieces: Telugu stayed at ~1.3 characters per token at every vocabulary size
# (results/small_7lang/vocabulary.csv). Text without combining marks splits exactly as before.
WORD_PATTERN = r"'(?:[sdmt]|ll|ve|re)| ?[\p{L}\p{M}]+| ?\p{N}+| ?[^\s\p{L}\p{M}\p{N}]+|\s+(?!\S)|\s+"


def train_shared_tokenizer(
    corpora: Mapping[str, Dataset],
    vocab_size: int,
    temperature: float,
    num_sentences: int,
    seed: int,
    model_max_length: int = 512,
    show_progress: bool = True,
) -> PreTrainedTokenizerFast:
    """One byte-level BPE vocabulary (paper: 32k) shared by all languages of `corpora`.

    The training text is a temperature-balanced sample (see `temperature_balanced_sample`). Special tokens
    and ids follow XLM-R: <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> = vocab_size - 1.
    The returned tokenizer's `init_kwargs["languages"]` lists the model's languages (saved to
    tokenizer_config.json).
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated"),
        # add_prefix_space=False (RoBERTa's choice) keeps decode(encode(text)) == text exactly.
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # <mask> is appended last, like XLM-R
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(
        temperature_balanced_sample(corpora, temperature, num_sentences, seed),
        trainer=trainer,
        length=num_sentences,
    )
    tokenizer.add_special_tokens([MASK_TOKEN])
    bos_id, eos_id = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        pair=f"{BOS_TOKEN} $A {EOS_TOKEN} {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(BOS_TOKEN, bos_id), (EOS_TOKEN, eos_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        sep_token=EOS_TOKEN,
        cls_token=BOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        mask_token=MASK_TOKEN,
        model_max_length=model_max_length,
        languages=list(corpora),
    )
    check_special_token_ids(fast)
    return fast


def check_special_token_ids(tokenizer) -> None:
    """The ids MetaXLMConfig assumes (bos 0, pad 1, eos 2): a mismatch would silently corrupt training."""
    expected = {BOS_TOKEN: 0, PAD_TOKEN: 1, EOS_TOKEN: 2, UNK_TOKEN: 3}
    found = {token: tokenizer.convert_tokens_to_ids(token) for token in expected}
    if found != expected:
        raise ValueError(
            f"tokenizer special-token ids are {found}, expected {expected} (XLM-R / MetaXLMConfig)"
        )


# ---------------------------------------------------------------------------------------------- blocks


def _tokenize_batch(batch: dict[str, list[str]], tokenizer) -> dict[str, list[list[int]]]:
    return {"token_ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]}


def _pack_blocks(batch: dict[str, list[list[int]]], block_size: int, bos_id: int, eos_id: int, lang_id: int):
    """XLM stream: sentence tokens each followed by </s>, cut into <s> + (block_size - 1) tokens.

    The tail of a map batch shorter than a block is dropped (as in transformers' run_mlm group_texts).
    """
    stream = [token for sentence in batch["token_ids"] for token in (*sentence, eos_id)]
    body = block_size - 1
    blocks = [[bos_id, *stream[start : start + body]] for start in range(0, len(stream) - body + 1, body)]
    return {"input_ids": blocks, "lang_ids": [lang_id] * len(blocks)}


def tokenize_into_blocks(
    sentences: Dataset,
    tokenizer,
    block_size: int,
    lang_id: int,
    num_proc: int | None = None,
    batch_size: int = 1000,
) -> Dataset:
    """Fixed-length blocks (`input_ids`: block_size ints, `lang_ids`: int) from a "text" dataset."""
    tokenized = sentences.map(
        _tokenize_batch,
        batched=True,
        batch_size=batch_size,
        fn_kwargs={"tokenizer": tokenizer},
        remove_columns=sentences.column_names,
        num_proc=num_proc,
        desc="tokenizing",
    )
    return tokenized.map(
        _pack_blocks,
        batched=True,
        batch_size=batch_size,
        fn_kwargs={
            "block_size": block_size,
            "bos_id": tokenizer.bos_token_id,
            "eos_id": tokenizer.eos_token_id,
            "lang_id": lang_id,
        },
        remove_columns=tokenized.column_names,
        num_proc=num_proc,
        desc="packing blocks",
    )


# ---------------------------------------------------------------------------------------------- masking


@dataclass
class MLMCollator:
    """Stacks block examples into an MLM batch with BERT's masking (Devlin et al. 2018), as XLM does.

    Of the non-special, non-padding tokens, each is selected with probability `mlm_probability` (15%); a
    selected token becomes <mask> 80% of the time, a random non-special token 10%, itself 10%.
    Returns input_ids, attention_mask, labels (original id at selected positions, -100 elsewhere): all (B, T);
    lang_ids (B,). Given `languages` (the model's `config.languages`), a batch whose rows are all one language
    also carries `single_language` (that code): the model then routes it without reading `lang_ids`, which
    keeps its forward free of graph breaks under `torch.compile`. Leave `languages` unset where batches are
    split by language afterwards (language-balanced steps split every tensor of the batch).

    The masks are drawn from a generator seeded with `seed` and a hash of the batch's token ids, not from
    torch's global generator: accelerate's dataloader collates one batch ahead, so a global-RNG mask would be
    drawn before a checkpoint's RNG state is saved and a resumed run would mask differently. Content seeding
    makes every batch's mask a function of (seed, batch): resumed runs reproduce the uninterrupted losses.
    """

    tokenizer: PreTrainedTokenizerFast
    mlm_probability: float = 0.15
    mask_replace_probability: float = 0.8
    random_replace_probability: float = 0.1
    seed: int = 0
    languages: list[str] | None = None

    def __post_init__(self):
        self.special_ids = torch.tensor(sorted(set(self.tokenizer.all_special_ids)))
        # Random replacements are drawn from ordinary tokens only: the ids that are not special.
        is_ordinary = torch.ones(len(self.tokenizer), dtype=torch.bool)
        is_ordinary[self.special_ids] = False
        self.ordinary_ids = is_ordinary.nonzero().squeeze(1)

    def __call__(self, examples: list[Mapping]) -> dict[str, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id
        longest = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)  # (B, T)
        for row, example in enumerate(examples):
            input_ids[row, : len(example["input_ids"])] = torch.as_tensor(example["input_ids"])
        attention_mask = (input_ids != pad_id).long()  # (B, T)
        lang_ids = torch.tensor([int(example["lang_ids"]) for example in examples], dtype=torch.long)  # (B,)
        masked_input_ids, labels = self.mask_tokens(input_ids)
        batch = {
            "input_ids": masked_input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "lang_ids": lang_ids,
        }
        ids = {int(example["lang_ids"]) for example in examples}  # Python ints: no tensor read
        if self.languages is not None and len(ids) == 1:
            batch["single_language"] = self.languages[ids.pop()]
        return batch

    def batch_generator(self, input_ids: torch.Tensor) -> torch.Generator:
        digest = hashlib.blake2b(input_ids.numpy().tobytes(), digest_size=8, key=str(self.seed).encode())
        return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)

    def mask_tokens(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids -> (masked ids, labels); special tokens (incl. padding) are never selected."""
        generator = self.batch_generator(input_ids)
        maskable = ~torch.isin(input_ids, self.special_ids)
        selected = (torch.rand(input_ids.shape, generator=generator) < self.mlm_probability) & maskable
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
        decision = torch.rand(input_ids.shape, generator=generator)
        to_mask = selected & (decision < self.mask_replace_probability)
        to_random = (
            selected
            & (decision >= self.mask_replace_probability)
            & (decision < self.mask_replace_probability + self.random_replace_probability)
        )
        random_tokens = self.ordinary_ids[
            torch.randint(len(self.ordinary_ids), input_ids.shape, generator=generator)
        ]
        masked = torch.where(to_mask, torch.full_like(input_ids, self.tokenizer.mask_token_id), input_ids)
        masked = torch.where(to_random, random_tokens, masked)
        return masked, labels


# ---------------------------------------------------------------------------------------------- end to end


@dataclass
class PretrainingData:
    """What MetaXLMTrainer takes: all languages' training blocks in one dataset (with `lang_ids`), the
    per-language validation blocks (evaluation: perplexity), the per-language meta-validation blocks (the meta
    objective of +meta adpt; None without a meta-validation split), sampling probabilities from the true sizes."""

    train: Dataset
    validation: dict[str, Dataset]
    sampling_probabilities: dict[str, float]
    train_sentences: dict[str, int]
    meta_validation: dict[str, Dataset] | None = None


def load_corpora(
    languages: Sequence[str],
    corpus_paths: Mapping[str, Sequence[str]] | None = None,
    text_dir: str | None = None,
    hub_dataset: str | None = None,
    hub_config_template: str | None = None,
    cache_dir: str | None = None,
) -> dict[str, Dataset]:
    """Sentences of every language, in `languages` order.

    A language's source is, first found: `corpus_paths[lang]` (files/folders), `text_dir/<lang>/`,
    the Hub dataset `hub_dataset` with config `hub_config_template.format(lang=lang)`.
    Every language is checked (paths exist, gzip readable, non-empty) before any is returned.
    """
    corpus_paths = dict(corpus_paths or {})
    unknown = sorted(set(corpus_paths) - set(languages))
    if unknown:
        raise CorpusError(f"corpus_paths has languages {unknown} that are not in languages={list(languages)}")
    sources: dict[str, list[str] | None] = {}
    for language in languages:
        if language in corpus_paths:
            sources[language] = list(corpus_paths[language])
        elif text_dir is not None and (Path(text_dir) / language).is_dir():
            sources[language] = [str(Path(text_dir) / language)]
        elif hub_dataset is not None:
            sources[language] = None
        else:
            where = f"no folder {Path(text_dir) / language}" if text_dir else "no text_dir"
            raise CorpusError(
                f"language {language!r} has no data: not in corpus_paths, {where}, and no hub_dataset given"
            )
    corpora = {}
    for language, paths in sources.items():
        if paths is None:
            config_name = hub_config_template.format(lang=language) if hub_config_template else None
            corpora[language] = load_hub_corpus(language, hub_dataset, config_name)
        else:
            corpora[language] = load_language_corpus(language, paths, cache_dir=cache_dir)
    return corpora


def hold_out_meta_validation(
    corpora: Mapping[str, Dataset], meta_validation_sentences: int, seed: int
) -> tuple[dict[str, Dataset], dict[str, Dataset]]:
    """The meta-validation split of +meta adpt: per language, hold out `meta_validation_sentences` sentences for
    the meta objective M (Eq. 2), before the evaluation split and the training text are taken from the rest, and
    drop every remaining sentence whose text equals a held-out one (corpora repeat lines). φ is trained on M, so
    the text it reads must be disjoint from the text its perplexity is reported on. Returns (rest, meta_validation).
    """
    rest, meta_validation = {}, {}
    for language, sentences in corpora.items():
        if not 1 <= meta_validation_sentences < len(sentences):
            raise CorpusError(
                f"language {language!r} has {len(sentences)} sentences: cannot hold out meta_validation_sentences="
                f"{meta_validation_sentences} (need 1 <= meta_validation_sentences < corpus size)"
            )
        remaining, held_out = split_validation(sentences, meta_validation_sentences, seed + 1, language)
        held_out_text = set(held_out["text"])
        rest[language] = remaining.filter(
            lambda batch: [text not in held_out_text for text in batch["text"]], batched=True
        )
        meta_validation[language] = held_out
    return rest, meta_validation


def split_corpora(
    corpora: Mapping[str, Dataset],
    validation_sentences: int,
    subsample: Mapping[str, int] | None,
    seed: int,
) -> tuple[dict[str, Dataset], dict[str, Dataset]]:
    """(train, validation) sentences per language: validation held out first, then training subsampled."""
    subsample = dict(subsample or {})
    unknown = sorted(set(subsample) - set(corpora))
    if unknown:
        raise CorpusError(f"subsample names languages {unknown} that are not among {list(corpora)}")
    train, validation = {}, {}
    for language, sentences in corpora.items():
        train[language], validation[language] = split_validation(
            sentences, validation_sentences, seed, language
        )
        if language in subsample:
            train[language] = subsample_sentences(train[language], subsample[language], seed, language)
    return train, validation


def pretraining_splits(
    corpora: Mapping[str, Dataset],
    validation_sentences: int,
    subsample: Mapping[str, int] | None,
    seed: int,
    meta_validation_sentences: int | None = None,
) -> tuple[dict[str, Dataset], dict[str, Dataset], dict[str, Dataset] | None]:
    """(train, validation, meta_validation) as recipes/pretrain.py splits its corpora: the meta-validation split
    first (meta learning only: `meta_validation_sentences` given), then the validation split that perplexity is
    reported on, then the training text, subsampled. One function, so that a measurement made after the run (e.g.
    `characters_per_token`) reads the very sentences the run was evaluated on."""
    meta_validation = None
    if meta_validation_sentences is not None:
        corpora, meta_validation = hold_out_meta_validation(corpora, meta_validation_sentences, seed)
    train, validation = split_corpora(corpora, validation_sentences, subsample, seed)
    return train, validation, meta_validation


def tokenization_statistics(tokenizer, sentences: Sequence[str]) -> dict:
    """How a tokenizer cuts sentences (no special tokens): unknown-token rate, characters per token, tokens per
    whitespace word, distinct tokens used."""
    ids = tokenizer(list(sentences), add_special_tokens=False)["input_ids"]
    tokens = sum(len(row) for row in ids)
    if tokens == 0:
        raise ValueError(f"{len(sentences)} sentences tokenize to no token: nothing to measure")
    words = sum(len(sentence.split()) for sentence in sentences)
    return {
        "sentences": len(sentences),
        "unk_rate": sum(row.count(tokenizer.unk_token_id) for row in ids) / tokens,
        "chars_per_token": sum(len(sentence) for sentence in sentences) / tokens,
        "tokens_per_word": tokens / words if words else math.nan,  # whitespace-only text has tokens, no words
        "distinct_tokens": len({token for row in ids for token in row}),
    }


def characters_per_token(tokenizer, sentences: Mapping[str, Dataset]) -> dict[str, float]:
    """Per language, the characters of its sentences per token the tokenizer cuts them into (no special tokens).

    The scale between a per-token loss and a per-character one: rows that learn their own vocabulary (as the
    paper's models do) cut the same text into different tokens, and a tokenizer that packs more characters into
    a token leaves each token more to predict, so per-token perplexities of two such rows do not compare; their
    loss per character, loss_per_token / characters_per_token, does (`bits_per_character`)."""
    ratios = {}
    for language, dataset in sentences.items():
        try:
            ratios[language] = tokenization_statistics(tokenizer, dataset["text"])["chars_per_token"]
        except ValueError as error:
            raise ValueError(f"language {language!r}: {error}") from error
    return ratios


def bits_per_character(perplexity: float, characters_per_token: float) -> float:
    """A per-token perplexity as bits per character: log2(perplexity) / characters per token."""
    return math.log2(perplexity) / characters_per_token


def build_blocks(
    train: Mapping[str, Dataset],
    validation: Mapping[str, Dataset],
    tokenizer,
    languages: Sequence[str],
    block_size: int,
    temperature: float,
    num_proc: int | None = None,
    meta_validation: Mapping[str, Dataset] | None = None,
) -> PretrainingData:
    """Tokenize and pack every language; p_i from the number of training blocks (tokens, not lines)."""
    splits = {"training": train, "validation": validation}
    if meta_validation is not None:
        splits["meta-validation"] = meta_validation
    blocks = {split: {} for split in splits}
    for lang_id, language in enumerate(languages):
        for split, sentences in splits.items():
            blocks[split][language] = tokenize_into_blocks(sentences[language], tokenizer, block_size, lang_id, num_proc)
            if len(blocks[split][language]) == 0:
                raise CorpusError(
                    f"language {language!r}: its {split} sentences make no block of {block_size} tokens; "
                    "lower block_size or give it more text (validation_sentences / meta_validation_sentences)"
                )
    train_blocks, validation_blocks = blocks["training"], blocks["validation"]
    sizes = {language: len(blocks) for language, blocks in train_blocks.items()}
    return PretrainingData(
        train=concatenate_datasets([train_blocks[language] for language in languages]),
        validation=validation_blocks,
        sampling_probabilities=language_sampling_probabilities(sizes, temperature),
        train_sentences={language: len(train[language]) for language in languages},
        meta_validation=blocks.get("meta-validation"),
    )


__all__ = [
    "CorpusError",
    "MLMCollator",
    "PretrainingData",
    "bits_per_character",
    "build_blocks",
    "characters_per_token",
    "check_special_token_ids",
    "corpus_fingerprint",
    "load_corpora",
    "pretraining_splits",
    "load_hub_corpus",
    "load_language_corpus",
    "resolve_corpus_files",
    "split_corpora",
    "hold_out_meta_validation",
    "split_validation",
    "subsample_sentences",
    "temperature_balanced_sample",
    "tokenize_into_blocks",
    "train_shared_tokenizer",
]
