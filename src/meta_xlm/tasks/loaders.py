"""Benchmark loaders: native files (plain or gzip) or Hub datasets -> `datasets.Dataset`.

Schemas (every loader of a family returns exactly these columns):

- Tagging (NER and POS), `TAGGING_FEATURES`:
    id: str           "<file name>:<line of the sentence's first token>" (or the Hub row index)
    tokens: list[str] the words of the sentence
    tags: list[str]   one tag per word (IOB2 for NER, UPOS for POS)
    language: str     language code
- Extractive QA (SQuAD 1.1 layout: TyDiQA-GoldP, XQuAD, MLQA), `QA_FEATURES`:
    id, title, context, question: str
    answers: {"text": list[str], "answer_start": list[int]}   character offsets into `context`
    language: str
- NLI (XNLI), `NLI_FEATURES`:
    id: str, premise: str, hypothesis: str,
    label: ClassLabel(names=NLI_LABELS)   0 entailment, 1 neutral, 2 contradiction (the Hub's xnli order)
    language: str

Every file is parsed completely in Python and then turned into a Dataset with `Dataset.from_list`, so the
result never comes from a stale cache of a file that has since changed. Bad input raises `DataFormatError`
naming the file, the line and what was expected. Whatever a loader changes or leaves out on request
(malformed NER tags mapped to O) is counted in a `DataReport` and logged.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets

logger = logging.getLogger(__name__)

# The 17 Universal POS tags (https://universaldependencies.org/u/pos/).
UPOS_TAGS = [
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
]
# WikiAnn / PAN-X tags in the Hub `wikiann` dataset's ClassLabel order.
PANX_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
# XNLI labels in the Hub `xnli` dataset's ClassLabel order.
NLI_LABELS = ["entailment", "neutral", "contradiction"]

TAGGING_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "tokens": datasets.List(datasets.Value("string")),
        "tags": datasets.List(datasets.Value("string")),
        "language": datasets.Value("string"),
    }
)
QA_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {
            "text": datasets.List(datasets.Value("string")),
            "answer_start": datasets.List(datasets.Value("int32")),
        },
        "language": datasets.Value("string"),
    }
)
NLI_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "premise": datasets.Value("string"),
        "hypothesis": datasets.Value("string"),
        "label": datasets.ClassLabel(names=NLI_LABELS),
        "language": datasets.Value("string"),
    }
)

# IOB2 tag: O, or B-/I- followed by a non-empty entity type.
_IOB2_TAG = re.compile(r"^(O|[BI]-[^\s-][^\s]*)$")
# CoNLL-U word ids: an integer word, a multiword-token range "3-4", an empty node "5.1".
_CONLLU_WORD_ID = re.compile(r"^[1-9][0-9]*$")
_CONLLU_RANGE_ID = re.compile(r"^[1-9][0-9]*-[1-9][0-9]*$")
_CONLLU_EMPTY_NODE_ID = re.compile(r"^[0-9]+\.[1-9][0-9]*$")


class DataFormatError(ValueError):
    """A benchmark file does not have the format its loader expects."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        where = f"{path}, line {line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line


@dataclass
class DataReport:
    """Counts of what loading and preprocessing changed or left out, so nothing disappears silently.

    Keys are "<what>" strings such as "malformed_tags_mapped_to_O" and values are counts; `details` holds a
    few examples of each ("file:line: tag '-NEL'").
    """

    counts: Counter = field(default_factory=Counter)
    details: dict[str, list[str]] = field(default_factory=dict)

    def add(self, what: str, count: int = 1, detail: str | None = None) -> None:
        self.counts[what] += count
        if detail is not None and len(self.details.setdefault(what, [])) < 5:
            self.details[what].append(detail)

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": self.details}


def open_text(path: str | Path) -> Iterator[str]:
    """Lines of a UTF-8 text file without their line ending; `.gz` files are decompressed on the fly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a benchmark file, plain or .gz)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        for line in handle:
            yield line.rstrip("\r\n")


def _read_json(path: str | Path) -> object:
    text = "\n".join(open_text(path))
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFormatError(path, error.lineno, f"invalid JSON: {error.msg}") from error


# ---------------------------------------------------------------------------------------------------------
# Tagging: token-tag files (PAN-X, MasakhaNER, IL-NER, XTREME udpos, MasakhaPOS) and CoNLL-U
# ---------------------------------------------------------------------------------------------------------


def _token_tag_sentences(path: Path) -> Iterator[tuple[int, list[tuple[int, list[str]]]]]:
    """Blank-line separated blocks of (line number, fields); fields split on TAB when the line has one,
    else on runs of spaces (MasakhaNER / MasakhaPOS write `token tag`)."""
    block: list[tuple[int, list[str]]] = []
    for number, line in enumerate(open_text(path), start=1):
        if not line.strip():
            if block:
                yield block[0][0], block
                block = []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        block.append((number, fields))
    if block:
        yield block[0][0], block


def load_token_tag_file(
    path: str | Path,
    language: str,
    scheme: str,
    label_set: list[str] | None = None,
    map_malformed_to_o: bool = False,
    report: DataReport | None = None,
) -> datasets.Dataset:
    """Load a `token<TAB>tag` (or `token tag`) file with one word per line and blank lines between sentences.

    scheme: "iob2" (NER: every tag must be O or B-/I-TYPE) or "upos" (POS: every tag one of UPOS_TAGS).
    label_set: when given, every tag must be in it (e.g. PANX_TAGS); a tag outside it is malformed.
    map_malformed_to_o: NER only. Instead of raising, replace a malformed tag (IL-NER's "-NEL", a missing
        tag) by O and count it in `report` under "malformed_tags_mapped_to_O".
    """
    if scheme not in ("iob2", "upos"):
        raise ValueError(f"scheme must be 'iob2' or 'upos', got {scheme!r}")
    if map_malformed_to_o and scheme != "iob2":
        raise ValueError("map_malformed_to_o applies to NER (scheme='iob2') only: a POS tag has no 'O'")
    path = Path(path)
    report = report if report is not None else DataReport()
    allowed = set(label_set) if label_set is not None else (set(UPOS_TAGS) if scheme == "upos" else None)
    mapped_before = report.counts["malformed_tags_mapped_to_O"]
    rows = []
    for first_line, block in _token_tag_sentences(path):
        tokens, tags = [], []
        for number, fields in block:
            token, tag = fields[0], fields[-1] if len(fields) >= 2 else None
            problem = _tag_problem(fields, tag, scheme, allowed)
            if problem is not None:
                if not map_malformed_to_o:
                    raise DataFormatError(
                        path,
                        number,
                        f"{problem} (pass map_malformed_to_o=True to map malformed NER tags to O)",
                    )
                report.add("malformed_tags_mapped_to_O", detail=f"{path.name}:{number}: {problem}")
                tag = "O"
            tokens.append(token)
            tags.append(tag)
        rows.append({"id": f"{path.name}:{first_line}", "tokens": tokens, "tags": tags, "language": language})
    mapped = report.counts["malformed_tags_mapped_to_O"] - mapped_before
    if mapped:
        logger.warning(
            "%s: %d malformed tags mapped to O (e.g. %s)",
            path,
            mapped,
            report.details["malformed_tags_mapped_to_O"][:3],
        )
    logger.info("%s: %d sentences", path, len(rows))
    return datasets.Dataset.from_list(rows, features=TAGGING_FEATURES)


def _tag_problem(fields: list[str], tag: str | None, scheme: str, allowed: set[str] | None) -> str | None:
    """Why a token-tag line is malformed, or None when it is fine."""
    if tag is None:
        return f"expected 'token<TAB>tag', got one field {fields[0]!r} (no tag)"
    if len(fields) > 2:
        return f"expected 2 fields 'token<TAB>tag', got {len(fields)}: {fields!r}"
    if scheme == "iob2" and not _IOB2_TAG.match(tag):
        return f"tag {tag!r} is not IOB2 (expected O, B-TYPE or I-TYPE)"
    if allowed is not None and tag not in allowed:
        return f"tag {tag!r} is not one of {sorted(allowed)}"
    return None


def load_conllu(path: str | Path, language: str) -> datasets.Dataset:
    """Load the syntactic words and their UPOS tags of a CoNLL-U file (https://universaldependencies.org/format.html).

    As UD specifies, a multiword token ("1-2 du") is only the surface form of the words 1 and 2 that follow
    it, which carry the UPOS tags: the range line is skipped and its words are kept. Empty nodes ("8.1")
    belong to the enhanced graph, not to the sentence: they are skipped. So `tokens` are the sentence's
    syntactic words (the XTREME udpos convention) and `tags` their UPOS column.
    """
    path = Path(path)
    rows, tokens, tags, first_line = [], [], [], None
    for number, line in enumerate(open_text(path), start=1):
        if not line.strip():
            if tokens:
                rows.append(
                    {"id": f"{path.name}:{first_line}", "tokens": tokens, "tags": tags, "language": language}
                )
            tokens, tags, first_line = [], [], None
            continue
        if line.startswith("#"):
            continue
        columns = line.split("\t")
        if len(columns) != 10:
            raise DataFormatError(
                path, number, f"expected 10 TAB-separated CoNLL-U columns, got {len(columns)}"
            )
        word_id, form, upos = columns[0], columns[1], columns[3]
        if _CONLLU_RANGE_ID.match(word_id) or _CONLLU_EMPTY_NODE_ID.match(word_id):
            continue
        if not _CONLLU_WORD_ID.match(word_id):
            raise DataFormatError(path, number, f"ID {word_id!r} is not a word index, a range 'N-M' or 'N.M'")
        if upos not in UPOS_TAGS:
            raise DataFormatError(path, number, f"UPOS {upos!r} of word {form!r} is not one of {UPOS_TAGS}")
        first_line = number if first_line is None else first_line
        tokens.append(form)
        tags.append(upos)
    if tokens:
        rows.append({"id": f"{path.name}:{first_line}", "tokens": tokens, "tags": tags, "language": language})
    logger.info("%s: %d sentences", path, len(rows))
    return datasets.Dataset.from_list(rows, features=TAGGING_FEATURES)


def load_pos_file(path: str | Path, language: str) -> datasets.Dataset:
    """POS from a CoNLL-U file (`.conllu[.gz]`) or a `token<TAB>UPOS` file (anything else)."""
    if ".conllu" in Path(path).name:
        return load_conllu(path, language)
    return load_token_tag_file(path, language, scheme="upos")


def tagging_from_hub_layout(dataset: datasets.Dataset, language: str, tags_column: str) -> datasets.Dataset:
    """Convert a Hub tagging dataset (`wikiann`: tokens + ner_tags; `universal_dependencies`: tokens + upos,
    both ClassLabel ids) to TAGGING_FEATURES."""
    if "tokens" not in dataset.column_names or tags_column not in dataset.column_names:
        raise ValueError(
            f"expected Hub columns 'tokens' and {tags_column!r}, the dataset has {dataset.column_names}"
        )
    names = dataset.features[tags_column].feature.names
    rows = [
        {
            "id": str(index),
            "tokens": row["tokens"],
            "tags": [names[t] for t in row[tags_column]],
            "language": language,
        }
        for index, row in enumerate(dataset)
    ]
    return datasets.Dataset.from_list(rows, features=TAGGING_FEATURES)


def label_inventory(*splits: datasets.Dataset, first: str | None = "O") -> list[str]:
    """Sorted tags seen in the given tagging datasets (`first`, e.g. "O", placed first when present)."""
    seen = sorted({tag for split in splits for tags in split["tags"] for tag in tags})
    if first in seen:
        seen.remove(first)
        seen.insert(0, first)
    return seen


# ---------------------------------------------------------------------------------------------------------
# Extractive QA: SQuAD 1.1 JSON (TyDiQA-GoldP, XQuAD, MLQA)
# ---------------------------------------------------------------------------------------------------------


def load_squad_json(path: str | Path, language: str) -> datasets.Dataset:
    """Load a SQuAD 1.1-layout JSON file; every answer must sit in its context at `answer_start`."""
    path = Path(path)
    document = _read_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataFormatError(path, None, "expected a SQuAD JSON object with a 'data' list")
    rows = []
    for article_index, article in enumerate(document["data"]):
        title = article.get("title", "")
        for paragraph_index, paragraph in enumerate(article["paragraphs"]):
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                where = f"data[{article_index}].paragraphs[{paragraph_index}], question id {qa['id']!r}"
                texts, starts = [], []
                for answer in qa["answers"]:
                    start, text = int(answer["answer_start"]), answer["text"]
                    found = context[start : start + len(text)]
                    if found != text:
                        raise DataFormatError(
                            path,
                            None,
                            f"{where}: answer {text!r} is not at answer_start={start} of the context "
                            f"(the context has {found!r} there)",
                        )
                    texts.append(text)
                    starts.append(start)
                rows.append(
                    {
                        "id": str(qa["id"]),
                        "title": title,
                        "context": context,
                        "question": qa["question"],
                        "answers": {"text": texts, "answer_start": starts},
                        "language": language,
                    }
                )
    logger.info("%s: %d questions", path, len(rows))
    return datasets.Dataset.from_list(rows, features=QA_FEATURES)


def qa_from_hub_layout(dataset: datasets.Dataset, language: str) -> datasets.Dataset:
    """Convert a Hub SQuAD-layout dataset (`squad`, `tydiqa` secondary_task, `xquad`) to QA_FEATURES."""
    rows = [
        {
            "id": str(row["id"]),
            "title": row.get("title", ""),
            "context": row["context"],
            "question": row["question"],
            "answers": {
                "text": list(row["answers"]["text"]),
                "answer_start": list(row["answers"]["answer_start"]),
            },
            "language": language,
        }
        for row in dataset
    ]
    return datasets.Dataset.from_list(rows, features=QA_FEATURES)


# ---------------------------------------------------------------------------------------------------------
# NLI: XNLI TSV
# ---------------------------------------------------------------------------------------------------------


def load_xnli_tsv(path: str | Path, language: str) -> datasets.Dataset:
    """Load `premise<TAB>hypothesis<TAB>label` rows (no header), label in NLI_LABELS."""
    path = Path(path)
    rows = []
    for number, line in enumerate(open_text(path), start=1):
        if not line:
            raise DataFormatError(path, number, "empty line (expected premise<TAB>hypothesis<TAB>label)")
        columns = line.split("\t")
        if len(columns) != 3:
            raise DataFormatError(
                path,
                number,
                f"expected 3 TAB-separated columns premise, hypothesis, label; got {len(columns)}",
            )
        premise, hypothesis, label = columns
        if label not in NLI_LABELS:
            raise DataFormatError(path, number, f"label {label!r} is not one of {NLI_LABELS}")
        rows.append(
            {
                "id": f"{path.name}:{number}",
                "premise": premise,
                "hypothesis": hypothesis,
                "label": NLI_LABELS.index(label),
                "language": language,
            }
        )
    logger.info("%s: %d pairs", path, len(rows))
    return datasets.Dataset.from_list(rows, features=NLI_FEATURES)


def nli_from_hub_layout(dataset: datasets.Dataset, language: str) -> datasets.Dataset:
    """Convert the Hub `xnli` layout (premise, hypothesis, label ClassLabel in NLI_LABELS order)."""
    names = dataset.features["label"].names
    if names != NLI_LABELS:
        raise ValueError(f"expected label names {NLI_LABELS}, the Hub dataset has {names}")
    rows = [
        {
            "id": str(index),
            "premise": row["premise"],
            "hypothesis": row["hypothesis"],
            "label": row["label"],
            "language": language,
        }
        for index, row in enumerate(dataset)
    ]
    return datasets.Dataset.from_list(rows, features=NLI_FEATURES)
