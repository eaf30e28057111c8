"""The task metrics of `meta_xlm.tasks.metrics` as one `evaluate` module (this file), so that a user's usual
`evaluate` code (`load`, `add_batch`, `compute`, `combine`, distributed evaluation) runs with them, offline:

    import evaluate
    from meta_xlm.tasks.evaluate_module import EVALUATE_MODULE_PATH

    ner = evaluate.load(EVALUATE_MODULE_PATH, "ner")  # the config name picks the task, as with "glue"
    ner.add_batch(predictions=[["B-PER", "O"]], references=[["B-PER", "O"]])
    ner.compute()                                      # {"precision": 100.0, "recall": 100.0, "f1": 100.0}

Each task calls the function of `meta_xlm.tasks.metrics` that fine-tuning uses (scores in percent, as in the
paper's tables), so both give the same numbers:
- "ner": `ner_scores` (seqeval entity-level P / R / F1); inputs: one list of IOB2 tags per sentence.
- "pos": `pos_scores`; inputs: one list of UPOS tags per sentence.
- "qa": `squad_scores` (SQuAD F1 / EM with multilingual normalisation); inputs in `evaluate`'s "squad" format,
  predictions {"id", "prediction_text"}, references {"id", "answers": {"text": [...], "answer_start": [...]}};
  `compute(language=...)` picks the answer normalisation (default "en").
- "nli": `accuracy`; inputs: class ids (XNLI: entailment 0, neutral 1, contradiction 2).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import evaluate

from meta_xlm.model_card import CITATION
from meta_xlm.tasks.metrics import accuracy, ner_scores, pos_scores, squad_scores

EVALUATE_MODULE_PATH = str(Path(__file__).resolve())

TAG_SEQUENCES = datasets.Features(
    {
        "predictions": datasets.Sequence(datasets.Value("string")),
        "references": datasets.Sequence(datasets.Value("string")),
    }
)
SQUAD_FORMAT = datasets.Features(
    {
        "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
        "references": {
            "id": datasets.Value("string"),
            "answers": datasets.Sequence(
                {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
            ),
        },
    }
)
CLASS_IDS = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})
# config name -> (what it computes, its inputs)
TASK_METRICS = {
    "ner": ("seqeval entity-level span precision / recall / F1 (percent)", TAG_SEQUENCES),
    "pos": ("POS tagging scores (percent) of meta_xlm.tasks.metrics.pos_scores", TAG_SEQUENCES),
    "qa": ("SQuAD 1.1 F1 / exact match (percent) with MLQA-style answer normalisation", SQUAD_FORMAT),
    "nli": ("classification accuracy (percent)", CLASS_IDS),
}


class MetaXLMTaskMetrics(evaluate.Metric):
    """The metric of the task named by the config name: "ner", "pos", "qa" or "nli"."""

    def _info(self):
        if self.config_name not in TASK_METRICS:
            raise KeyError(f"config name {self.config_name!r}: expected one of {sorted(TASK_METRICS)}")
        description, features = TASK_METRICS[self.config_name]
        return evaluate.MetricInfo(
            description=description,
            citation=CITATION,
            inputs_description=__doc__,
            features=features,
            homepage="https://arxiv.org/abs/2010.03017",
        )

    def _compute(self, predictions, references, language: str = "en"):
        if self.config_name == "ner":
            return ner_scores(references, predictions)
        if self.config_name == "pos":
            return pos_scores(references, predictions)
        if self.config_name == "nli":
            return accuracy(references, predictions)
        answers = {reference["id"]: list(reference["answers"]["text"]) for reference in references}
        predicted = {prediction["id"]: prediction["prediction_text"] for prediction in predictions}
        return squad_scores(predicted, answers, language)


__all__ = ["EVALUATE_MODULE_PATH", "MetaXLMTaskMetrics"]
