"""SQuAD F1 / exact match (percent) with multilingual answer normalisation, `meta_xlm.tasks.metrics.squad_scores`,
as an evaluate module taking evaluate's "squad" input format."""

import datasets
import evaluate

from meta_xlm.tasks.evaluate_metrics import metric_info
from meta_xlm.tasks.metrics import squad_scores

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


class MetaXLMSquad(evaluate.Metric):
    def _info(self):
        return metric_info(
            "SQuAD 1.1 F1 and exact match in percent, best over the gold answers, with MLQA-style answer "
            "normalisation for the language given to compute(language=...).",
            "predictions: {'id', 'prediction_text'}; references: {'id', 'answers': {'text': [...], "
            "'answer_start': [...]}}; language: the answers' language code (default 'en').",
            SQUAD_FORMAT,
        )

    def _compute(self, predictions, references, language="en"):
        answers = {reference["id"]: list(reference["answers"]["text"]) for reference in references}
        predicted = {prediction["id"]: prediction["prediction_text"] for prediction in predictions}
        return squad_scores(predicted, answers, language)
