"""Fine-tuning protocol of the paper's Appendix A, as library functions that recipes/finetune.py wires.

- Epochs: 10 (NER), 10 (POS), 2 (QA), 200 (XNLI), following XTREME (Hu et al., 2020).
- Grid: batch {16, 32} x learning rate {2e-5, 3e-5, 5e-5} for NER, POS, QA; XNLI: batch {4, 8} x encoder
  learning rate {1e-6, 5e-6, 2e-5} x classifier learning rate {5e-6, 2e-5, 5e-5}.
- Model selection on the English dev set (zero-shot: fine-tune on English, test on the other languages) or
  on the target language's dev set (within-language: fine-tune and test on one language), over every grid
  point and every epoch (a checkpoint is saved after each epoch). Where the dev file is also the training file or
  a scored test file (PAN-X and XNLI, whose test labels are missing here, and TyDiQA-GoldP, which has no test
  set), selection runs on training examples held out instead (`selection_holdout_fraction`): selecting on the
  test set would report the best of several test scores.
- The whole network is fine-tuned, language-specific modules included. `freeze_language_modules=True` fine-tunes
  the X-MOD way instead (Pfeiffer et al., 2022): embeddings and every language-specific module frozen, trained
  through train_language's modules, each test language run through its own.
- `xtreme_predictions_dir` also writes the test predictions in XTREME's submission layout (tasks/xtreme.py).
A MetaXLM model routes each example through its language's modules (`lang_ids`); any other encoder
(e.g. XLM-R) is fine-tuned the same way without `lang_ids`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from meta_xlm.tasks.splits import (
    DATA_LAYOUT,
    TASKS,
    load_task_file,
    load_task_split,
    resolve_data_file,
    split_note,
)
from meta_xlm.tasks.loaders import NLI_LABELS, PANX_TAGS, UPOS_TAGS, DataReport, label_inventory
from meta_xlm.tasks.metrics import MAIN_METRIC, accuracy, ner_scores, pos_scores, squad_scores
from meta_xlm.tasks.preprocessing import (
    language_index,
    postprocess_qa_predictions,
    prepare_qa_eval_features,
    prepare_qa_train_features,
    tokenize_nli,
    tokenize_tagging,
    word_predictions,
)
from meta_xlm.tasks.reference import REFERENCE_LANGUAGES
from meta_xlm.tasks.xtreme import write_xtreme_predictions

logger = logging.getLogger(__name__)

SETTINGS = ("within", "zero_shot")
PAPER_EPOCHS = {"ner": 10, "pos": 10, "qa": 2, "nli": 200}
PAPER_BATCH_SIZES = {"ner": [16, 32], "pos": [16, 32], "qa": [16, 32], "nli": [4, 8]}
PAPER_LEARNING_RATES = {
    "ner": [2e-5, 3e-5, 5e-5],
    "pos": [2e-5, 3e-5, 5e-5],
    "qa": [2e-5, 3e-5, 5e-5],
    "nli": [1e-6, 5e-6, 2e-5],
}
PAPER_CLASSIFIER_LEARNING_RATES = [5e-6, 2e-5, 5e-5]  # XNLI only


@dataclass
class FinetuneArguments:
    """What to fine-tune and evaluate; every default is the paper's (Appendix A)."""

    # Both are required; they default to None only so that a YAML file (parser defaults) can supply them.
    task: str | None = field(default=None, metadata={"help": "ner | pos | qa | nli (required)"})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "pretrained checkpoint, MetaXLM or any Transformers encoder (required)"},
    )
    setting: str = field(default="zero_shot", metadata={"help": "within | zero_shot"})
    train_language: str = field(default="en", metadata={"help": "fine-tuning language (zero_shot: en)"})
    eval_languages: list[str] = field(
        default_factory=list,
        metadata={
            "help": "test languages (default within: train_language; zero_shot: the paper's languages)"
        },
    )
    model_name: str | None = field(
        default=None, metadata={"help": "row name in result tables (default: folder name)"}
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "benchmark data laid out as ../shared/data (recipes: $META_XLM_DATA by default)"},
    )
    hub_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Hub id template instead of data_dir, e.g. 'wikiann:{language}' or 'xnli:{language}'"
        },
    )
    train_file: str | None = field(
        default=None,
        metadata={"help": "local train file instead of the layout (e.g. MasakhaNER train.txt.gz)"},
    )
    dev_file: str | None = field(default=None, metadata={"help": "local dev file of the train language"})
    test_files: list[str] = field(
        default_factory=list, metadata={"help": "LANG=PATH entries: local test files instead of the layout"}
    )
    map_malformed_to_o: bool = field(
        default=False, metadata={"help": "NER: map malformed tags to O (counted)"}
    )
    fallback_language: str | None = field(
        default=None, metadata={"help": "MetaXLM: route languages the model lacks through this one's modules"}
    )
    epochs: float | None = field(default=None, metadata={"help": "default: 10 NER/POS, 2 QA, 200 XNLI"})
    batch_sizes: list[int] = field(default_factory=list, metadata={"help": "grid (default: the paper's)"})
    learning_rates: list[float] = field(default_factory=list, metadata={"help": "grid (XNLI: encoder lr)"})
    classifier_learning_rates: list[float] = field(default_factory=list, metadata={"help": "XNLI grid"})
    max_grid_points: int | None = field(default=None, metadata={"help": "keep the first N grid points"})
    max_train_examples: int | None = field(default=None)
    selection_holdout_fraction: float = field(
        default=0.1,
        metadata={
            "help": "when the dev file is also the training file or a scored test file (PAN-X, TyDiQA-GoldP, "
            "XNLI in ../shared/data), select on this fraction of the training examples, held out from training "
            "(the same split for every model); 0: select on the dev file anyway"
        },
    )
    max_eval_examples: int | None = field(default=None, metadata={"help": "per dev/test set"})
    max_seq_length: int = field(
        default=128, metadata={"help": "tokens per example (QA window: max_qa_length)"}
    )
    max_qa_length: int = field(default=384)
    doc_stride: int = field(default=128)
    max_question_length: int = field(default=64)
    n_best_size: int = field(default=20)
    max_answer_length: int = field(default=30)
    freeze_language_modules: bool = field(
        default=False,
        metadata={"help": "X-MOD fine-tuning: freeze embeddings and language modules (MetaXLM models only)"},
    )
    xtreme_predictions_dir: str | None = field(
        default=None,
        metadata={"help": "also write test predictions as <dir>/<panx|udpos|xnli|tydiqa>/test-<lang>.<tsv|json>"},
    )


@dataclass
class GridPoint:
    batch_size: int
    learning_rate: float
    classifier_learning_rate: float | None = None

    def name(self) -> str:
        suffix = f"_clr{self.classifier_learning_rate:g}" if self.classifier_learning_rate is not None else ""
        return f"bs{self.batch_size}_lr{self.learning_rate:g}{suffix}"


def hyperparameter_grid(args: FinetuneArguments) -> list[GridPoint]:
    """Appendix A's grid (or the overrides), truncated to `max_grid_points`."""
    batch_sizes = args.batch_sizes or PAPER_BATCH_SIZES[args.task]
    learning_rates = args.learning_rates or PAPER_LEARNING_RATES[args.task]
    if args.task == "nli":
        classifier_rates = args.classifier_learning_rates or PAPER_CLASSIFIER_LEARNING_RATES
        grid = [
            GridPoint(b, lr, c)
            for b, lr, c in itertools.product(batch_sizes, learning_rates, classifier_rates)
        ]
    else:
        if args.classifier_learning_rates:
            raise ValueError(
                "classifier_learning_rates is an XNLI hyperparameter; the other tasks use one learning rate"
            )
        grid = [GridPoint(b, lr) for b, lr in itertools.product(batch_sizes, learning_rates)]
    return grid[: args.max_grid_points] if args.max_grid_points else grid


def check_arguments(args: FinetuneArguments) -> None:
    if args.model_name_or_path is None:
        raise ValueError("--model_name_or_path is required (a pretrained checkpoint folder or Hub id)")
    if args.task not in TASKS:
        raise ValueError(f"--task must be one of {TASKS}, got {args.task!r}")
    if args.setting not in SETTINGS:
        raise ValueError(f"--setting must be one of {SETTINGS}, got {args.setting!r}")
    if args.task == "nli" and args.setting == "within":
        raise ValueError(
            "XNLI has English training data only: the paper evaluates it zero-shot (--setting zero_shot)"
        )


def evaluation_languages(args: FinetuneArguments) -> list[str]:
    if args.eval_languages:
        return list(args.eval_languages)
    if args.test_files:
        return [entry.partition("=")[0] for entry in args.test_files]
    if args.setting == "within":
        return [args.train_language]
    return [language for language in REFERENCE_LANGUAGES[args.task] if language in DATA_LAYOUT[args.task]]


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """Raw examples and model features of one split of one language."""

    language: str
    split: str
    source: str
    examples: datasets.Dataset
    features: datasets.Dataset
    report: DataReport
    note: str | None = None  # how this split was made, when it is not the file's own (metrics "notes")


def data_files(args: FinetuneArguments) -> dict[tuple[str, str], str]:
    """(split, language) -> file given on the command line instead of the data_dir layout."""
    files = {}
    if args.train_file is not None:
        files["train", args.train_language] = args.train_file
    if args.dev_file is not None:
        files["dev", args.train_language] = args.dev_file
    for entry in args.test_files:
        language, separator, path = entry.partition("=")
        if not separator or not language or not path:
            raise ValueError(f"--test_files entry {entry!r} is not LANG=PATH")
        files["test", language] = path
    return files


def load_examples(
    args: FinetuneArguments, language: str, split: str, report: DataReport
) -> tuple[datasets.Dataset, str]:
    """Examples of a split (a file named on the command line, the data_dir layout, or the Hub), truncated to the
    max_*_examples overrides; and where they came from."""
    given = data_files(args).get((split, language))
    if given is not None:
        examples = load_task_file(args.task, given, language, None, args.map_malformed_to_o, report)
        source = given
    elif args.hub_dataset is not None:
        hub_id = args.hub_dataset.format(language=language)
        examples, source = load_task_split(args.task, language, split, args.data_dir, hub_id), f"hub:{hub_id}"
    else:
        source = str(resolve_data_file(args.task, language, split, args.data_dir))
        examples = load_task_split(
            args.task, language, split, args.data_dir, None, args.map_malformed_to_o, report
        )
    limit = args.max_train_examples if split == "train" else args.max_eval_examples
    if limit is not None and limit < len(examples):
        report.add("examples_not_used_max_examples", len(examples) - limit)
        examples = examples.select(range(limit))
    return examples, source


def label_list(args: FinetuneArguments, train: datasets.Dataset) -> list[str]:
    """Output labels: PAN-X's fixed 7 tags, the 17 UPOS tags, XNLI's 3 labels, or a BIO corpus's own tags."""
    if args.task == "pos":
        return list(UPOS_TAGS)
    if args.task == "nli":
        return list(NLI_LABELS)
    if args.task == "ner":
        tags = label_inventory(train)
        return list(PANX_TAGS) if set(tags) <= set(PANX_TAGS) else tags
    return []


def build_features(
    args: FinetuneArguments,
    examples: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    labels: list[str],
    lang_id: int | None,
    training: bool,
    report: DataReport,
) -> datasets.Dataset:
    label2id = {label: index for index, label in enumerate(labels)}
    if args.task in ("ner", "pos"):
        return tokenize_tagging(examples, tokenizer, label2id, args.max_seq_length, lang_id, report)
    if args.task == "nli":
        return tokenize_nli(examples, tokenizer, args.max_seq_length, lang_id)
    if training:
        return prepare_qa_train_features(
            examples,
            tokenizer,
            args.max_qa_length,
            args.doc_stride,
            args.max_question_length,
            lang_id,
            report,
        )
    return prepare_qa_eval_features(
        examples,
        tokenizer,
        args.max_qa_length,
        args.doc_stride,
        args.max_question_length,
        lang_id,
        with_answer_positions=True,
        report=report,
    )


def load_task_data(
    args: FinetuneArguments, language: str, split: str, tokenizer, labels: list[str] | None, model_config
) -> TaskData:
    report = DataReport()
    examples, source = load_examples(args, language, split, report)
    labels = labels if labels is not None else label_list(args, examples)
    return task_data(args, language, split, source, examples, report, tokenizer, labels, model_config)


def task_data(
    args: FinetuneArguments, language: str, split: str, source: str, examples: datasets.Dataset,
    report: DataReport, tokenizer, labels: list[str], model_config, note: str | None = None,
) -> TaskData:
    """Model features of a split's examples (training features for "train", evaluation features otherwise)."""
    lang_id = language_index(model_config, language, args.fallback_language)
    features = build_features(args, examples, tokenizer, labels, lang_id, split == "train", report)
    return TaskData(language, split, source, examples, features, report, note)


HOLDOUT_SEED = 0  # one held-out split for every model and fine-tuning seed: their selections stay comparable


def selection_data(
    args: FinetuneArguments, examples: datasets.Dataset, source: str, report: DataReport, tokenizer,
    labels: list[str], model_config, test_sources: set[str],
) -> tuple[TaskData, TaskData]:
    """(training data, selection data) of the training language from its training `examples` (read from `source`).
    Selection runs on the language's dev file unless that file is also the training file or a scored test file;
    then on `selection_holdout_fraction` of the training examples, held out from training."""
    dev = load_task_data(args, args.train_language, "dev", tokenizer, labels, model_config)
    if args.selection_holdout_fraction > 0 and dev.source in {source, *test_sources}:
        parts = examples.train_test_split(test_size=args.selection_holdout_fraction, seed=HOLDOUT_SEED)
        examples = parts["train"]
        report.add("examples_held_out_for_selection", len(parts["test"]))
        note = (
            f"model selection on {len(parts['test'])} training examples held out from {Path(source).name}, not "
            f"on {Path(dev.source).name}: that file is also the training data or a test set here"
        )
        dev = task_data(args, args.train_language, "dev", source, parts["test"], DataReport(), tokenizer, labels,
                        model_config, note)  # fmt: skip
    train = task_data(args, args.train_language, "train", source, examples, report, tokenizer, labels, model_config)
    return train, dev


# ---------------------------------------------------------------------------------------------------------
# Model, metrics, training
# ---------------------------------------------------------------------------------------------------------


def load_model(args: FinetuneArguments, labels: list[str], path: str | None = None):
    """The task head on the pretrained encoder (new head weights are initialised by from_pretrained)."""
    path = path or args.model_name_or_path
    if args.task == "qa":
        return AutoModelForQuestionAnswering.from_pretrained(path)
    head = (
        AutoModelForTokenClassification if args.task in ("ner", "pos") else AutoModelForSequenceClassification
    )
    return head.from_pretrained(
        path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )


def freeze_language_modules(model) -> None:
    """X-MOD's fine-tuning: only the shared encoder layers and the task head train; `lang_ids` still route each
    language through its own (frozen) modules."""
    if not hasattr(model, "freeze_embeddings_and_language_adapters"):
        raise ValueError(
            f"--freeze_language_modules needs a MetaXLM model; {type(model).__name__} has no language modules"
        )
    model.freeze_embeddings_and_language_adapters()


def label_names(task: str) -> list[str]:
    return ["start_positions", "end_positions"] if task == "qa" else ["labels"]


def data_collator(task: str, tokenizer):
    """Pads a batch and keeps `lang_ids` (LongTensor[B]) next to input_ids for MetaXLM routing."""
    if task in ("ner", "pos"):
        return DataCollatorForTokenClassification(tokenizer)
    if task == "nli":
        return DataCollatorWithPadding(tokenizer)
    return default_data_collator  # QA windows are padded to max_qa_length already


def score_predictions(
    args: FinetuneArguments, data: TaskData, predictions, label_ids, labels: list[str]
) -> dict:
    """Task metrics (percent) of model outputs on one TaskData."""
    if args.task in ("ner", "pos"):
        gold, predicted = word_predictions(
            np.asarray(predictions), np.asarray(label_ids), dict(enumerate(labels)), data.features["example_id"]
        )
        return ner_scores(gold, predicted) if args.task == "ner" else pos_scores(gold, predicted)
    if args.task == "nli":
        return accuracy(list(np.asarray(label_ids)), list(np.asarray(predictions).argmax(-1)))
    start_logits, end_logits = predictions
    answers = postprocess_qa_predictions(
        data.examples, data.features, start_logits, end_logits, args.n_best_size, args.max_answer_length
    )
    references = {example["id"]: example["answers"]["text"] for example in data.examples}
    return squad_scores(answers, references, data.language)


def compute_metrics_for(args: FinetuneArguments, dev: TaskData, labels: list[str]):
    """Trainer hook: dev scores per epoch; "score" is the selection metric (NER/POS/QA F1, XNLI accuracy)."""

    def compute_metrics(prediction):
        scores = score_predictions(args, dev, prediction.predictions, prediction.label_ids, labels)
        return {"score": scores[MAIN_METRIC[args.task]], **scores}

    return compute_metrics


def model_inputs(features: datasets.Dataset) -> datasets.Dataset:
    """Drop the bookkeeping columns (example_id: QA and tagging; offset_mapping: QA) before the model."""
    return features.remove_columns(
        [c for c in ("example_id", "offset_mapping") if c in features.column_names]
    )


def nli_optimizer(model, grid_point: GridPoint, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with XNLI's two learning rates: the encoder's and the classifier head's."""
    classifier = [p for n, p in model.named_parameters() if n.startswith("classifier.")]
    encoder = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    if not classifier:
        raise ValueError(
            "the sequence-classification model has no 'classifier.*' parameters to give their own lr"
        )
    return torch.optim.AdamW(
        [
            {"params": encoder, "lr": grid_point.learning_rate},
            {"params": classifier, "lr": grid_point.classifier_learning_rate},
        ],
        weight_decay=weight_decay,
    )


@dataclass
class GridResult:
    grid_point: GridPoint
    dev_score: float
    checkpoint: str
    epoch_scores: list[dict]


def train_grid_point(
    args: FinetuneArguments,
    training_args: TrainingArguments,
    grid_point: GridPoint,
    train: TaskData,
    dev: TaskData,
    labels: list[str],
    tokenizer,
) -> GridResult:
    """Fine-tune from the pretrained weights with one grid point; the best epoch on `dev` is kept."""
    output_dir = Path(training_args.output_dir) / "grid" / grid_point.name()
    run_args = dataclasses.replace(
        training_args,
        output_dir=str(output_dir),
        per_device_train_batch_size=grid_point.batch_size,
        learning_rate=grid_point.learning_rate,
        num_train_epochs=args.epochs if args.epochs is not None else PAPER_EPOCHS[args.task],
        eval_strategy="epoch",
        save_strategy="epoch",  # Appendix A: a checkpoint after each epoch
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=True,
        label_names=label_names(args.task),
    )
    model = load_model(args, labels)
    if args.freeze_language_modules:
        freeze_language_modules(model)
    optimizers = (
        (nli_optimizer(model, grid_point, run_args.weight_decay), None)
        if args.task == "nli"
        else (None, None)
    )
    trainer = Trainer(
        model=model,
        args=run_args,
        data_collator=data_collator(args.task, tokenizer),
        train_dataset=model_inputs(train.features),
        eval_dataset=model_inputs(dev.features),
        processing_class=tokenizer,
        compute_metrics=compute_metrics_for(args, dev, labels),
        optimizers=optimizers,
    )
    trainer.train()
    epoch_scores = [entry for entry in trainer.state.log_history if "eval_score" in entry]
    if trainer.state.best_model_checkpoint is None:
        raise RuntimeError(
            f"{grid_point.name()}: no dev evaluation happened (did training run for an epoch?)"
        )
    logger.info(
        "%s: best dev %s %.2f at %s",
        grid_point.name(),
        MAIN_METRIC[args.task],
        trainer.state.best_metric,
        trainer.state.best_model_checkpoint,
    )
    return GridResult(
        grid_point, float(trainer.state.best_metric), trainer.state.best_model_checkpoint, epoch_scores
    )


def evaluate_checkpoint(
    args: FinetuneArguments,
    training_args: TrainingArguments,
    checkpoint: str,
    test: TaskData,
    labels,
    tokenizer,
) -> dict:
    """Scores of a fine-tuned checkpoint on one language's test data."""
    model = load_model(args, labels, path=checkpoint)
    eval_args = dataclasses.replace(
        training_args, output_dir=str(Path(checkpoint).parent), label_names=label_names(args.task)
    )
    trainer = Trainer(
        model=model,
        args=eval_args,
        data_collator=data_collator(args.task, tokenizer),
        processing_class=tokenizer,
    )
    output = trainer.predict(model_inputs(test.features))
    if args.xtreme_predictions_dir is not None and training_args.process_index == 0:
        path = write_xtreme_predictions(
            args.xtreme_predictions_dir, args.task, test.language, test.examples, test.features,
            output.predictions, output.label_ids, labels, args.n_best_size, args.max_answer_length,
        )  # fmt: skip
        logger.info("XTREME predictions for %s written to %s", test.language, path)
    return score_predictions(args, test, output.predictions, output.label_ids, labels)


CONVERGENCE_MIN_GAIN = 0.5  # points of the selection metric (F1, accuracy) over the last two epochs


def convergence(dev_scores: list[float], min_gain: float = CONVERGENCE_MIN_GAIN) -> dict:
    """Has a grid point's fine-tuning converged? Yes when its best epoch is not the last one (the dev score has
    peaked), or when the dev score gained less than `min_gain` over the last two epochs (it has flattened).
    Otherwise more epochs would likely have scored higher, and the cell measures partly how fast a model
    fine-tunes rather than what it learned. Epochs count from 1; the best is the first epoch with the highest
    score, as the Trainer keeps it (load_best_model_at_end replaces the best only on a strictly higher score)."""
    if not dev_scores:
        raise ValueError("convergence needs the dev score of at least one epoch, got none")
    best_epoch = 1 + dev_scores.index(max(dev_scores))
    gain = dev_scores[-1] - dev_scores[-3] if len(dev_scores) >= 3 else None
    peaked = best_epoch < len(dev_scores)
    return {
        "best_epoch": best_epoch,
        "epochs": len(dev_scores),
        "gain_last_two_epochs": gain,
        "converged": peaked or (gain is not None and gain < min_gain),
    }


def mean_scores(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the target languages (English excluded unless it is the only one)."""
    languages = [language for language in scores if language != "en"] or list(scores)
    metrics = scores[languages[0]].keys()
    return {
        metric: sum(scores[language][metric] for language in languages) / len(languages) for metric in metrics
    }


def run_finetuning(
    args: FinetuneArguments, training_args: TrainingArguments, tokenizer, model_config
) -> dict:
    """The whole protocol: grid search with per-epoch dev selection, then test every eval language."""
    check_arguments(args)
    if not tokenizer.is_fast:
        raise ValueError("fine-tuning needs a fast tokenizer (word_ids and offset mappings)")
    for language in [args.train_language, *evaluation_languages(args)]:
        language_index(model_config, language, args.fallback_language)  # fail before any data is read
    # selection in the training language: zero-shot the English dev set, within-language the target's
    train_report = DataReport()
    train_examples, train_source = load_examples(args, args.train_language, "train", train_report)
    labels = label_list(args, train_examples)
    tests = {
        language: load_task_data(args, language, "test", tokenizer, labels, model_config)
        for language in evaluation_languages(args)
    }
    test_sources = {test.source for test in tests.values()}
    train, dev = selection_data(
        args, train_examples, train_source, train_report, tokenizer, labels, model_config, test_sources
    )
    results = [
        train_grid_point(args, training_args, grid_point, train, dev, labels, tokenizer)
        for grid_point in hyperparameter_grid(args)
    ]
    best = max(results, key=lambda result: result.dev_score)
    logger.info("selected %s (dev %s %.2f)", best.grid_point.name(), MAIN_METRIC[args.task], best.dev_score)
    scores = {
        language: evaluate_checkpoint(args, training_args, best.checkpoint, test, labels, tokenizer)
        for language, test in tests.items()
    }
    return metrics_record(args, labels, train, dev, tests, results, best, scores)


def metrics_record(args, labels, train, dev, tests, results, best, scores) -> dict:
    """The metrics file's content: scores per eval language + avg, the selection, the data actually used."""
    notes = sorted(
        {note for data in [train, dev, *tests.values()] if (note := data.note or split_note(args.task, data.split))}
    )
    return {
        "task": args.task,
        "setting": args.setting,
        "model": args.model_name or Path(args.model_name_or_path.rstrip("/")).name,
        "model_name_or_path": args.model_name_or_path,
        "train_language": args.train_language,
        "freeze_language_modules": args.freeze_language_modules,
        "eval_languages": list(tests),
        "main_metric": MAIN_METRIC[args.task],
        "scores": scores,
        "avg": mean_scores(scores),
        "labels": labels,
        "selection": {
            "dev_language": dev.language,
            "best": {
                **vars(best.grid_point), "dev_score": best.dev_score, "checkpoint": best.checkpoint,
                **convergence([e["eval_score"] for e in best.epoch_scores]),
            },
            "grid": [
                {
                    **vars(r.grid_point),
                    "dev_score": r.dev_score,
                    "epochs": [{"epoch": e["epoch"], "dev_score": e["eval_score"]} for e in r.epoch_scores],
                }
                for r in results
            ],
        },
        "data": {
            data.split if data.split != "test" else f"test-{data.language}": {
                "source": data.source,
                "examples": len(data.examples),
                "features": len(data.features),
                "report": data.report.to_dict(),
            }
            for data in [train, dev, *tests.values()]
        },
        "notes": notes,
    }
