"""The task metrics as an `evaluate` module shipped in the package: it loads offline with
`evaluate.load(path, task)`, and a user's usual evaluate code (batches added one by one, then compute) gives
the numbers of meta_xlm.tasks.metrics."""

import random

import evaluate
import pytest

from meta_xlm.tasks.evaluate_module import EVALUATE_MODULE_PATH
from meta_xlm.tasks.metrics import accuracy, ner_scores, pos_scores, squad_scores

NER_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
UPOS = ["NOUN", "VERB", "ADJ", "DET", "PUNCT", "PROPN"]


def tag_sentences(tags, seed, count=23):
    """Gold and predicted sentences (lengths 1-9); about a third of the predicted tags differ from gold."""
    generator = random.Random(seed)
    gold = [[generator.choice(tags) for _ in range(generator.randint(1, 9))] for _ in range(count)]
    predicted = [[tag if generator.random() < 0.67 else generator.choice(tags) for tag in s] for s in gold]
    return gold, predicted


def in_batches(module, predictions, references, size=5):
    for start in range(0, len(predictions), size):
        batch = slice(start, start + size)
        module.add_batch(predictions=predictions[batch], references=references[batch])
    return module


@pytest.mark.parametrize(
    ("task", "tags", "score"), [("ner", NER_TAGS, ner_scores), ("pos", UPOS, pos_scores)]
)
def test_tagging_modules_give_the_package_scores(task, tags, score):
    gold, predicted = tag_sentences(tags, seed=len(task))
    expected = score(gold, predicted)
    assert 0 < expected["f1"] < 100  # neither all right nor all wrong: the comparison can fail
    module = in_batches(evaluate.load(EVALUATE_MODULE_PATH, task), predicted, gold)
    assert module.compute() == pytest.approx(expected, rel=1e-12)


def test_squad_module_takes_evaluates_squad_format_and_the_language():
    questions = {
        "q1": (["the Nile river"], "Nile River."),  # articles and punctuation normalised away (en)
        "q2": (["in 1887", "1887"], "1887"),
        "q3": (["الكتاب"], "كتاب"),  # Arabic: "ال" removed only when language="ar"
        "q4": (["blue whale"], "the largest whale"),
    }
    predictions = [{"id": key, "prediction_text": text} for key, (_, text) in questions.items()]
    references = [
        {"id": key, "answers": {"text": golds, "answer_start": [0] * len(golds)}}
        for key, (golds, _) in questions.items()
    ]
    golds = {key: golds for key, (golds, _) in questions.items()}
    texts = {key: text for key, (_, text) in questions.items()}
    module = evaluate.load(EVALUATE_MODULE_PATH, "qa")
    for language in ("en", "ar"):
        expected = squad_scores(texts, golds, language)
        in_batches(module, predictions, references, size=3)
        assert module.compute(language=language) == pytest.approx(expected, rel=1e-12)
    assert squad_scores(texts, golds, "ar") != squad_scores(texts, golds, "en")  # the language is passed on


def test_nli_module_gives_the_package_accuracy():
    generator = random.Random(3)
    gold = [generator.randrange(3) for _ in range(31)]
    predicted = [label if generator.random() < 0.6 else generator.randrange(3) for label in gold]
    module = in_batches(evaluate.load(EVALUATE_MODULE_PATH, "nli"), predicted, gold, size=8)
    assert module.compute() == pytest.approx(accuracy(gold, predicted), rel=1e-12)


def test_unknown_task_is_named():
    with pytest.raises(KeyError, match="config name 'parsing': expected one of"):
        evaluate.load(EVALUATE_MODULE_PATH, "parsing")
