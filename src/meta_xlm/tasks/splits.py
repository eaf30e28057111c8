"""Where each task's splits live in a data folder laid out as ../shared/data, and one entry point to load a
split from there or the Hub.

The paper's splits are train / dev / test. Where a labelled split is missing from ../shared/data the table
below says which file stands in, and `split_note` says so in words (written into every metrics file):
- PAN-X and XNLI test labels are stripped upstream: "test" is the dev file.
- TyDiQA-GoldP has no test set: "test" is the dev file (as in the paper and XTREME).
- XNLI has no English training data here: "train" is the English dev file (the data README's suggestion).
- POS ar/hi: train/dev from XTREME's udpos TSV, test from the PUD treebank; hi has no train file.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from meta_xlm.tasks.loaders import (
    PANX_TAGS,
    DataReport,
    load_pos_file,
    load_squad_json,
    load_token_tag_file,
    load_xnli_tsv,
    nli_from_hub_layout,
    qa_from_hub_layout,
    tagging_from_hub_layout,
)

TASKS = ("ner", "pos", "qa", "nli")
SPLITS = ("train", "dev", "test")


def _panx(language: str) -> dict[str, str]:
    return {
        split: f"ner/panx_xtreme/{'dev' if split == 'test' else split}-{language}.tsv.gz" for split in SPLITS
    }


def _ud(folder: str, prefix: str, splits=SPLITS) -> dict[str, str]:
    return {split: f"ud/{folder}/{prefix}-ud-{split}.conllu.gz" for split in splits}


def _tydiqa(language: str, has_train: bool) -> dict[str, str]:
    files = {"dev": f"qa/tydiqa_goldp/tydiqa-goldp-v1.1-dev-{language}.json.gz"}
    files["test"] = files["dev"]
    if has_train:
        files["train"] = f"qa/tydiqa_goldp/tydiqa-goldp-v1.1-train-{language}.json.gz"
    return files


def _xnli(language: str) -> dict[str, str]:
    return {split: f"nli/xnli/dev-{language}.tsv.gz" for split in SPLITS}


# task -> language -> split -> path relative to the data directory
DATA_LAYOUT: dict[str, dict[str, dict[str, str]]] = {
    "ner": {language: _panx(language) for language in ("en", "ar", "fr", "ru", "hi", "sw", "te", "mr")},
    "pos": {
        "en": _ud("UD_English-EWT", "en_ewt"),
        "fr": _ud("UD_French-Sequoia", "fr_sequoia"),
        "ru": _ud("UD_Russian-Taiga", "ru_taiga"),
        "te": _ud("UD_Telugu-MTG", "te_mtg"),
        "mr": _ud("UD_Marathi-UFAL", "mr_ufal"),
        "ar": {
            "train": "pos/xtreme_udpos/train-ar.tsv.gz",
            "dev": "pos/xtreme_udpos/dev-ar.tsv.gz",
            "test": "ud/UD_Arabic-PUD/ar_pud-ud-test.conllu.gz",
        },
        "hi": {"dev": "pos/xtreme_udpos/dev-hi.tsv.gz", "test": "ud/UD_Hindi-PUD/hi_pud-ud-test.conllu.gz"},
        "sw": {split: f"pos/masakhapos_swa/{split}.txt.gz" for split in SPLITS},
    },
    "qa": {
        **{language: _tydiqa(language, has_train=False) for language in ("ar", "ru", "te")},
        **{language: _tydiqa(language, has_train=True) for language in ("en", "sw")},
    },
    "nli": {language: _xnli(language) for language in ("en", "ar", "fr", "ru", "hi", "sw")},
}

SPLIT_NOTES = {
    ("ner", "test"): "PAN-X test labels are stripped upstream: scored on the dev split",
    ("qa", "test"): "TyDiQA-GoldP has no test set: scored on the dev split",
    ("nli", "test"): "XNLI test labels are stripped upstream: scored on the dev split",
    ("nli", "train"): "no MultiNLI training data available: trained on the English XNLI dev split",
    ("nli", "dev"): "model selection on the XNLI dev split, which is also the training and test data here",
}


def split_note(task: str, split: str) -> str | None:
    """A sentence saying which file stands in for a missing split, or None."""
    return SPLIT_NOTES.get((task, split))


def resolve_data_file(task: str, language: str, split: str, data_dir: str | Path | None) -> Path:
    """Path of a task's split for a language under `data_dir` (laid out as ../shared/data: DATA_LAYOUT)."""
    if data_dir is None:
        raise ValueError(
            f"no data_dir to read the {task} {split} split of {language!r} from: pass data_dir (--data_dir), "
            "set META_XLM_DATA for the recipes, or name a Hub dataset"
        )
    if task not in DATA_LAYOUT:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    languages = DATA_LAYOUT[task]
    if language not in languages:
        raise ValueError(
            f"no {task} data for language {language!r} under {data_dir}; available: {sorted(languages)}"
        )
    if split not in languages[language]:
        raise ValueError(
            f"no {task} {split} split for language {language!r} under {data_dir}; available splits: "
            f"{sorted(languages[language])}"
        )
    return Path(data_dir) / languages[language][split]


def load_task_file(
    task: str,
    path: str | Path,
    language: str,
    ner_label_set: list[str] | None = None,
    map_malformed_to_o: bool = False,
    report: DataReport | None = None,
) -> datasets.Dataset:
    """Load one local benchmark file with the loader of its task.

    NER: `token<TAB>tag` / `token tag` IOB2 files; `ner_label_set` restricts the tags (PANX_TAGS for PAN-X),
    None accepts any well-formed IOB2 tag (MasakhaNER, IL-NER bring their own sets). POS: CoNLL-U when the
    name contains ".conllu", else `token<TAB>UPOS`. QA: SQuAD JSON. NLI: XNLI TSV.
    """
    if task == "ner":
        return load_token_tag_file(path, language, "iob2", ner_label_set, map_malformed_to_o, report)
    if task == "pos":
        return load_pos_file(path, language)
    if task == "qa":
        return load_squad_json(path, language)
    if task == "nli":
        return load_xnli_tsv(path, language)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def load_hub_split(task: str, hub_id: str, language: str, split: str) -> datasets.Dataset:
    """Load a split from the Hub and convert it to the task's schema.

    hub_id: "<dataset id>" or "<dataset id>:<config>" (e.g. "wikiann:te", "universal_dependencies:te_mtg",
    "xnli:fr", "tydiqa:secondary_task"). The Hub names dev "validation"; "dev" is translated.
    """
    name, _, config = hub_id.partition(":")
    hub_split = "validation" if split == "dev" else split
    dataset = datasets.load_dataset(name, config or None, split=hub_split)
    if task == "ner":
        return tagging_from_hub_layout(dataset, language, "ner_tags")
    if task == "pos":
        return tagging_from_hub_layout(dataset, language, "upos")
    if task == "qa":
        return qa_from_hub_layout(dataset, language)
    if task == "nli":
        return nli_from_hub_layout(dataset, language)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def load_task_split(
    task: str,
    language: str,
    split: str,
    data_dir: str | Path,
    hub_id: str | None = None,
    map_malformed_to_o: bool = False,
    report: DataReport | None = None,
) -> datasets.Dataset:
    """Load a split from `data_dir` per DATA_LAYOUT, or from the Hub when `hub_id` is given."""
    if hub_id is not None:
        return load_hub_split(task, hub_id, language, split)
    path = resolve_data_file(task, language, split, data_dir)
    # NER in DATA_LAYOUT is PAN-X: its files must use the WikiAnn tag set.
    return load_task_file(task, path, language, PANX_TAGS, map_malformed_to_o, report)
