"""XNLI accuracy (percent) of `meta_xlm.tasks.metrics.accuracy`, as an evaluate module."""

import datasets
import evaluate

from meta_xlm.tasks.evaluate_metrics import metric_info
from meta_xlm.tasks.metrics import accuracy

CLASS_IDS = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})


class MetaXLMNli(evaluate.Metric):
    def _info(self):
        return metric_info(
            "Classification accuracy in percent.",
            "predictions, references: class ids (XNLI: entailment 0, neutral 1, contradiction 2).",
            CLASS_IDS,
        )

    def _compute(self, predictions, references):
        return accuracy(references, predictions)
