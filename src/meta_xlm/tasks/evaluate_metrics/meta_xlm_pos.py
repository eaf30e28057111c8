"""POS scores (percent) of `meta_xlm.tasks.metrics.pos_scores`, as an evaluate module."""

import evaluate

from meta_xlm.tasks.evaluate_metrics import TAG_SEQUENCES, metric_info
from meta_xlm.tasks.metrics import pos_scores


class MetaXLMPos(evaluate.Metric):
    def _info(self):
        return metric_info(
            "POS tagging scores in percent, as meta_xlm.tasks.metrics.pos_scores computes them.",
            "predictions, references: one list of UPOS tags per sentence, aligned word by word.",
            TAG_SEQUENCES,
        )

    def _compute(self, predictions, references):
        return pos_scores(references, predictions)
