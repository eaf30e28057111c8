"""NER entity-level precision / recall / F1 (percent) of `meta_xlm.tasks.metrics.ner_scores`, as an evaluate module."""

import evaluate

from meta_xlm.tasks.evaluate_metrics import TAG_SEQUENCES, metric_info
from meta_xlm.tasks.metrics import ner_scores


class MetaXLMNer(evaluate.Metric):
    def _info(self):
        return metric_info(
            "seqeval entity-level span precision / recall / F1 in percent (CoNLL-2000 conlleval semantics).",
            "predictions, references: one list of IOB2 tags per sentence, aligned word by word.",
            TAG_SEQUENCES,
        )

    def _compute(self, predictions, references):
        return ner_scores(references, predictions)
