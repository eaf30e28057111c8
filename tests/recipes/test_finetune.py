"""recipes/finetune.py and recipes/results_table.py as subprocesses on the real benchmark files.

A tiny random MetaXLM model (adapters per language) with a small BPE tokenizer trained on real text is
fine-tuned for 2 steps per task; the point is the pipeline (data -> lang_ids -> Trainer -> selection ->
metrics file -> table), not the scores.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, shared_data_path
from fixtures.tiny_checkpoint import make_tiny_checkpoint
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

SMALL_RUN = [
    "--batch_sizes",
    "8",
    "--learning_rates",
    "5e-4",
    "--epochs",
    "1",
    "--max_steps",
    "2",
    "--max_train_examples",
    "24",
    "--max_eval_examples",
    "16",
    "--max_seq_length",
    "64",
    "--max_qa_length",
    "128",
    "--doc_stride",
    "32",
    "--use_cpu",
    "true",
    "--disable_tqdm",
    "true",
]
ADAPTER = "roberta.encoder.layer.0.output.adapter_modules.{}.dense1.weight"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    shared_data_path("text")
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_meta_xlm"), shared_data_path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("finetune_runs")


def finetune(checkpoint: Path, output_dir: Path, *arguments: str, launcher=(sys.executable,)) -> dict:
    command = [
        *launcher,
        str(REPO_ROOT / "recipes" / "finetune.py"),
        "--model_name_or_path",
        str(checkpoint),
        "--model_name",
        "tiny",
        "--data_dir",
        str(shared_data_path()),
        "--output_dir",
        str(output_dir),
        *SMALL_RUN,
        *arguments,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=os.environ, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))


def changed(checkpoint: Path, record: dict, language: str) -> bool:
    before = load_file(checkpoint / "model.safetensors")[ADAPTER.format(language)]
    after = load_file(Path(record["selection"]["best"]["checkpoint"]) / "model.safetensors")[
        ADAPTER.format(language)
    ]
    return not bool((before == after).all())


def test_pos_within_telugu(checkpoint, runs):
    record = finetune(
        checkpoint, runs / "pos_within_te", "--task", "pos", "--setting", "within", "--train_language", "te"
    )
    assert record["task"] == "pos" and record["setting"] == "within" and record["model"] == "tiny"
    assert list(record["scores"]) == ["te"] and 0 <= record["scores"]["te"]["f1"] <= 100
    assert record["selection"]["dev_language"] == "te"
    assert record["data"]["train"]["source"].endswith("te_mtg-ud-train.conllu.gz")
    # nothing vanished silently: the 1051 - 24 sentences not used are counted
    assert record["data"]["train"]["report"]["counts"]["examples_not_used_max_examples"] == 1051 - 24
    # lang_ids reached the model: Telugu adapters were trained, English ones untouched
    assert changed(checkpoint, record, "te") and not changed(checkpoint, record, "en")


def test_pos_zero_shot_english_to_telugu_with_accelerate(checkpoint, runs):
    launcher = (str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", "1", "--cpu")
    record = finetune(
        checkpoint,
        runs / "pos_zero_shot",
        "--task",
        "pos",
        "--setting",
        "zero_shot",
        "--eval_languages",
        "te",
        launcher=launcher,
    )
    assert record["selection"]["dev_language"] == "en" and list(record["scores"]) == ["te"]
    assert record["data"]["train"]["source"].endswith("en_ewt-ud-train.conllu.gz")
    assert changed(checkpoint, record, "en") and not changed(checkpoint, record, "te")


def test_ner_panx_zero_shot(checkpoint, runs):
    record = finetune(
        checkpoint, runs / "ner", "--task", "ner", "--setting", "zero_shot", "--eval_languages", "te", "sw"
    )
    assert record["labels"] == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    assert set(record["scores"]) == {"te", "sw"} and set(record["scores"]["te"]) == {
        "precision",
        "recall",
        "f1",
    }
    assert record["avg"]["f1"] == pytest.approx(
        (record["scores"]["te"]["f1"] + record["scores"]["sw"]["f1"]) / 2
    )
    assert "PAN-X test labels are stripped upstream: scored on the dev split" in record["notes"]


def test_qa_tydiqa_zero_shot(checkpoint, runs):
    record = finetune(
        checkpoint, runs / "qa", "--task", "qa", "--setting", "zero_shot", "--eval_languages", "te"
    )
    assert set(record["scores"]["te"]) == {"f1", "exact_match"}
    assert record["data"]["test-te"]["examples"] == 16 and record["data"]["test-te"]["features"] >= 16


def test_nli_xnli_zero_shot(checkpoint, runs):
    record = finetune(
        checkpoint,
        runs / "nli",
        "--task",
        "nli",
        "--setting",
        "zero_shot",
        "--eval_languages",
        "sw",
        "--classifier_learning_rates",
        "1e-3",
    )
    assert record["selection"]["best"]["classifier_learning_rate"] == 1e-3
    assert 0 <= record["scores"]["sw"]["accuracy"] <= 100
    # the English training data is the XNLI en dev file: selection on 10% of it held out, not on itself
    assert (record["data"]["train"]["examples"], record["data"]["dev"]["examples"]) == (21, 3)
    assert any("held out" in note for note in record["notes"]), record["notes"]


def test_selection_never_runs_on_a_test_file(checkpoint):
    """PAN-X sw has no labelled test set (its dev file is scored): within-language selection must run on training
    examples held out instead, disjoint from those trained on; MasakhaPOS sw keeps its own dev file."""
    from transformers import AutoConfig, AutoTokenizer

    from meta_xlm.tasks.finetuning import FinetuneArguments, label_list, load_examples, load_task_data, selection_data
    from meta_xlm.tasks.loaders import DataReport

    tokenizer, config = AutoTokenizer.from_pretrained(checkpoint), AutoConfig.from_pretrained(checkpoint)

    def split(task: str):
        args = FinetuneArguments(task=task, model_name_or_path=str(checkpoint), setting="within", train_language="sw",
                                 data_dir=str(shared_data_path()), max_train_examples=50, max_eval_examples=20)  # fmt: skip
        examples, source = load_examples(args, "sw", "train", DataReport())
        labels = label_list(args, examples)
        test = load_task_data(args, "sw", "test", tokenizer, labels, config)
        train, dev = selection_data(args, examples, source, DataReport(), tokenizer, labels, config, {test.source})
        return examples, test, train, dev

    examples, test, train, dev = split("ner")
    assert test.source.endswith("dev-sw.tsv.gz") and dev.source == train.source == test.source.replace("dev-", "train-")
    assert (len(train.examples), len(dev.examples)) == (45, 5) and train.report.counts["examples_held_out_for_selection"] == 5
    as_text = lambda data: [" ".join(tokens) for tokens in data["tokens"]]  # noqa: E731
    assert sorted(as_text(train.examples) + as_text(dev.examples)) == sorted(as_text(examples))
    assert "held out" in dev.note and len(dev.features) == 5
    _, test, train, dev = split("pos")
    assert dev.source.endswith("masakhapos_swa/dev.txt.gz") and dev.note is None and len(train.examples) == 50


def test_results_table_renders_every_run(runs, tmp_path):
    expected = {"pos_within_te", "pos_zero_shot", "ner", "qa", "nli"}
    missing = {name for name in expected if not (runs / name / "metrics.json").exists()}
    if missing:
        pytest.skip(f"runs {sorted(missing)} did not run in this session (run the whole module)")
    command = [
        sys.executable,
        str(REPO_ROOT / "recipes" / "results_table.py"),
        str(runs),
        "--output_dir",
        str(tmp_path),
        "--with_reference",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=os.environ, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    for title in ("### NER (F1)", "### POS (F1)", "### TyDiQA-GoldP (F1)", "### XNLI (accuracy)"):
        assert title in markdown
    assert "| paper: + meta adpt | 44.4 | 78.5 | 62.4 | 66.0 | 67.3 | 50.1 | 61.5 |" in markdown
    csv_lines = (tmp_path / "results.csv").read_text(encoding="utf-8").splitlines()
    ours = [line for line in csv_lines if ",tiny," in line]
    assert sorted(line.split(",")[0] + "/" + line.split(",")[1] for line in ours) == [
        "ner/zero_shot",
        "nli/zero_shot",
        "pos/within",
        "pos/zero_shot",
        "qa/zero_shot",
    ]
    tables = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert [table["task"] for table in tables] == ["ner", "pos", "qa", "nli"]
