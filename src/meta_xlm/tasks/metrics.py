"""Offline metrics of the downstream suite. All scores are percentages (0-100), as in the paper's tables.

- NER: entity-level span F1 of seqeval (CoNLL-2000 `conlleval` semantics, seqeval's default mode: an I-X that
  does not continue an X entity starts a new entity, so "I-PER I-PER" is one PER span).
- POS: the paper reports "F1", the number XTREME (Hu et al., 2020) computes: its run_tag.py and evaluate.py pass
  the UPOS tag sequences to seqeval's `f1_score` as they are. seqeval reads a tag's first character as its
  chunk prefix and the rest as its type, so a run of equal tags ("NOUN NOUN") is one span and a word's tag is
  right only if its whole run is. That is not word accuracy; we report it as `f1` and word accuracy as
  `accuracy`.
- QA: SQuAD 1.1 F1 and exact match, max over the gold answers, with multilingual answer normalisation in the
  manner of MLQA's evaluation (`normalize_answer`).
- NLI: accuracy.
`evaluate.load(...)` needs the Hub for its metric scripts, so nothing here uses it.
"""

from __future__ import annotations

import re
import string
import sys
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence

from seqeval.metrics import f1_score as seqeval_f1
from seqeval.metrics import precision_score as seqeval_precision
from seqeval.metrics import recall_score as seqeval_recall


def ner_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """seqeval entity-level precision / recall / F1 (percent) over sentences of IOB2 tags."""
    _check_aligned(gold, predicted)
    gold, predicted = [list(s) for s in gold], [list(s) for s in predicted]
    return {
        "precision": 100.0 * float(seqeval_precision(gold, predicted)),
        "recall": 100.0 * float(seqeval_recall(gold, predicted)),
        "f1": 100.0 * float(seqeval_f1(gold, predicted)),
    }


def pos_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """XTREME's POS F1 (seqeval `f1_score` over the raw UPOS sequences) and word accuracy, both percent."""
    _check_aligned(gold, predicted)
    total = sum(len(sentence) for sentence in gold)
    if total == 0:
        raise ValueError("pos_scores got no words to score")
    correct = sum(int(g == p) for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps))
    gold, predicted = [list(s) for s in gold], [list(s) for s in predicted]
    with warnings.catch_warnings():  # seqeval warns that UPOS tags are not IOB tags: XTREME scores them so
        warnings.filterwarnings("ignore", message=".* seems not to be NE tag", category=UserWarning)
        f1 = float(seqeval_f1(gold, predicted))
    return {"f1": 100.0 * f1, "accuracy": 100.0 * correct / total}


def _check_aligned(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> None:
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted ones")
    for index, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {index}: {len(g)} gold tags but {len(p)} predicted tags")


def accuracy(gold: Sequence[int], predicted: Sequence[int]) -> dict[str, float]:
    """Classification accuracy (percent)."""
    if len(gold) != len(predicted) or not gold:
        raise ValueError(f"accuracy needs equally long non-empty lists, got {len(gold)} and {len(predicted)}")
    return {"accuracy": 100.0 * sum(int(g == p) for g, p in zip(gold, predicted)) / len(gold)}


# ---------------------------------------------------------------------------------------------------------
# SQuAD F1 / EM with multilingual normalisation
# ---------------------------------------------------------------------------------------------------------

# Every Unicode punctuation character (categories Pc Pd Pe Pf Pi Po Ps) plus ASCII punctuation that Unicode
# files under symbols ($ + < = > ^ ` | ~). Arabic "،" "؟" and the Devanagari danda "।" are category Po.
PUNCTUATION = frozenset(
    chr(code) for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)).startswith("P")
) | frozenset(string.punctuation)

# Articles removed before comparing answers, per language, as in MLQA's evaluation. For Arabic MLQA removes
# every occurrence of "ال" (its pattern has no word-boundary anchor that can match); we do the same so that
# scores are comparable with published MLQA-style numbers. Languages not listed keep all words.
ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einer|eines|einem|einen|der|die|das|des|dem|den)\b",
    "ar": r"ال",
}
_CJK = re.compile(r"([\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff])")


def normalize_answer(text: str, language: str) -> list[str]:
    """Lower-case, drop punctuation, drop the language's articles, split into words.

    Chinese ("zh") has no spaces: each CJK character becomes its own word (MLQA's mixed segmentation).
    """
    text = text.lower()
    text = "".join(" " if character in PUNCTUATION else character for character in text)
    if language in ARTICLES:
        text = re.sub(ARTICLES[language], " ", text)
    if language == "zh":
        text = _CJK.sub(r" \1 ", text)
    return text.split()


def squad_exact_match(prediction: str, gold: str, language: str) -> float:
    return float(normalize_answer(prediction, language) == normalize_answer(gold, language))


def squad_f1(prediction: str, gold: str, language: str) -> float:
    """Bag-of-words F1 between normalised prediction and gold answer (0-1)."""
    predicted, reference = normalize_answer(prediction, language), normalize_answer(gold, language)
    common = sum((Counter(predicted) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def squad_scores(
    predictions: dict[str, str], references: dict[str, list[str]], language: str
) -> dict[str, float]:
    """SQuAD F1 / EM (percent): per question the best score over its gold answers, averaged over questions.

    predictions: question id -> predicted answer text; references: question id -> gold answer texts. A
    question without a prediction counts as 0, as in the official script.
    """
    if not references:
        raise ValueError("squad_scores got no reference questions")
    extra = set(predictions) - set(references)
    if extra:
        raise ValueError(f"{len(extra)} predictions have no reference question, e.g. {sorted(extra)[:3]}")
    f1 = exact = 0.0
    for question_id, golds in references.items():
        if question_id not in predictions:
            continue
        prediction = predictions[question_id]
        f1 += max(squad_f1(prediction, gold, language) for gold in golds)
        exact += max(squad_exact_match(prediction, gold, language) for gold in golds)
    return {"f1": 100.0 * f1 / len(references), "exact_match": 100.0 * exact / len(references)}


# The score each task's tables report, and the metric used for model selection.
MAIN_METRIC = {"ner": "f1", "pos": "f1", "qa": "f1", "nli": "accuracy"}
