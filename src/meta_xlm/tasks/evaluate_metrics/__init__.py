"""The task metrics of `meta_xlm.tasks.metrics` as `evaluate` modules shipped in this folder, so that a user's
usual `evaluate` code (`load`, `add_batch`, `compute`, `combine`, distributed evaluation) runs with them offline:

    import evaluate
    from meta_xlm.tasks.evaluate_metrics import metric_path

    ner = evaluate.load(metric_path("ner"))        # no Hub access: the script is a file of this package
    ner.add_batch(predictions=[["B-PER", "O"]], references=[["B-PER", "O"]])
    ner.compute()                                    # {"precision": 100.0, "recall": 100.0, "f1": 100.0}

Each module calls the function of `meta_xlm.tasks.metrics` that fine-tuning uses (scores in percent, as in the
paper's tables), so both give the same numbers:
- "ner": `ner_scores` (seqeval entity-level P / R / F1); inputs: lists of IOB2 tags per sentence.
- "pos": `pos_scores`; inputs: lists of UPOS tags per sentence.
- "qa": `squad_scores` (SQuAD F1 / EM with multilingual normalisation); inputs in `evaluate`'s "squad" format,
  predictions {"id", "prediction_text"}, references {"id", "answers": {"text": [...], "answer_start": [...]}};
  `compute(language=...)` picks the answer normalisation (default "en").
- "nli": `accuracy`; inputs: class ids.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import evaluate

from meta_xlm.model_card import CITATION

FOLDER = Path(__file__).resolve().parent
SCRIPTS = {"ner": "meta_xlm_ner.py", "pos": "meta_xlm_pos.py", "qa": "meta_xlm_squad.py", "nli": "meta_xlm_nli.py"}

TAG_SEQUENCES = datasets.Features(
    {
        "predictions": datasets.Sequence(datasets.Value("string")),
        "references": datasets.Sequence(datasets.Value("string")),
    }
)


def metric_path(task: str) -> str:
    """The path `evaluate.load` takes for a task's metric: "ner", "pos", "qa" or "nli"."""
    if task not in SCRIPTS:
        raise ValueError(f"task must be one of {sorted(SCRIPTS)}, got {task!r}")
    return str(FOLDER / SCRIPTS[task])


def metric_info(description: str, inputs_description: str, features: datasets.Features) -> evaluate.MetricInfo:
    """The `evaluate.MetricInfo` of a meta-xlm task metric."""
    return evaluate.MetricInfo(
        description=description,
        citation=CITATION,
        inputs_description=inputs_description,
        features=features,
        homepage="https://arxiv.org/abs/2010.03017",
    )


__all__ = ["SCRIPTS", "metric_info", "metric_path"]
