"""Model cards: every card parses with huggingface_hub.ModelCard, `language:` == config.languages, model-index ==
the metrics files, the usage snippet runs as written; variant names; the code commit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from test_hub import save_tiny_checkpoint

from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.model_card import architecture_table, code_commit, usage_snippet, variant_name, write_model_card

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CARDS = REPO_ROOT / "model_cards"
NOT_CARDS = {"TEMPLATE.md", "README.md"}  # the template and the folder's explanation

METRICS = [
    {"task": "ner", "setting": "within", "model": "JointPair + meta adpt", "main_metric": "f1",
     "scores": {"te": {"f1": 81.23456, "precision": 80.5, "recall": 82.0}}},
    {"task": "ner", "setting": "zero_shot", "model": "JointPair + meta adpt", "main_metric": "f1",
     "scores": {"te": {"f1": 47.5, "precision": 45.0, "recall": 50.25}}},
    {"task": "qa", "setting": "within", "model": "JointPair + meta adpt", "main_metric": "f1", "split": "dev",
     "scores": {"te": {"f1": 61.4, "exact_match": 44.125, "num_examples": 130}}},
    {"task": "nli", "setting": "zero_shot", "model": "JointPair + meta adpt", "main_metric": "accuracy",
     "scores": {"te": {"accuracy": 67.9}, "en": {"accuracy": 75.0}}},
]  # fmt: skip
TASK_TYPES = {"ner": "token-classification", "qa": "question-answering", "nli": "text-classification"}
SETTING_WORDS = {"within": "within-language", "zero_shot": "zero-shot cross-lingual"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A tiny JointPair + meta adpt checkpoint with metrics files, and its generated card."""
    root = tmp_path_factory.mktemp("card")
    directory = root / "checkpoint"
    save_tiny_checkpoint(directory, languages=["en", "te"])
    (directory / "pretrain_config.yaml").write_text(yaml.safe_dump({
        "max_steps": 500, "per_device_train_batch_size": 16, "gradient_accumulation_steps": 4,
        "learning_rate": 1e-4, "meta_learning": True, "bf16": True, "seed": 3,
    }))  # fmt: skip
    (directory / "perplexity.json").write_text(json.dumps({"en": 12.5, "te": 40.0}))
    (directory / "characters_per_token.json").write_text(json.dumps({"en": 2.5}))  # te: not measured
    metrics_files = []
    for index, record in enumerate(METRICS):
        path = root / f"metrics_{index}.json"
        path.write_text(json.dumps(record))
        metrics_files.append(path)
    copy = root / "model_cards" / "tiny.md"
    readme = write_model_card(
        directory, metrics_files=metrics_files, hardware="1 × test CPU", num_processes=2, copy_to=copy,
        findings="Telugu perplexity is worse than Mono (negative interference).",
    )  # fmt: skip
    return directory, ModelCard.load(readme), copy


def test_generated_card_metadata_matches_the_checkpoint(generated):
    directory, card, copy = generated
    config = MetaXLMConfig.from_pretrained(directory)
    assert card.data.language == config.languages == ["en", "te"]
    assert card.data.library_name == "transformers"
    assert card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "fill-mask"
    assert "jointpair-meta-adpt" in card.data.tags
    assert "JointPair + meta adpt" in card.text
    assert ModelCard.load(copy).content == card.content


def test_model_index_equals_the_metrics_files(generated):
    _, card, _ = generated
    entries = {
        (r.task_type, r.dataset_config, r.dataset_split, r.metric_type, r.metric_name, r.metric_value)
        for r in card.data.eval_results
    }
    expected = {
        (
            TASK_TYPES[m["task"]],
            language,
            m.get("split"),
            metric,
            f"{metric} ({SETTING_WORDS[m['setting']]})",
            value,
        )
        for m in METRICS
        for language, scores in m["scores"].items()
        for metric, value in scores.items()
    }
    assert entries == expected
    assert len(card.data.eval_results) == len(expected)


def test_training_setup_commit_and_citation_are_in_the_card(generated):
    _, card, _ = generated
    text = card.text
    assert "| batch (sequences per step) | 128 (16 per device × 4 accumulation steps × 2 processes) |" in text
    assert "| precision | bf16 |" in text and "| hardware | 1 × test CPU |" in text
    assert "`pretrain_config.yaml`" in text
    assert "negative interference" in text.lower() and "Telugu perplexity is worse" in text
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    if head.returncode == 0:
        assert head.stdout.strip() in text
    assert "2010.03017" in text and "Wang, Zirui and Lipton, Zachary C. and Tsvetkov, Yulia" in text


def test_validation_perplexity_and_bits_per_character_are_in_the_card(generated):
    _, card, _ = generated
    assert "| en | 12.50 | 2.50 | 1.458 |" in card.text  # log2(12.5) / 2.5
    assert "| te | 40.00 | – | – |" in card.text  # no characters per token: no bits per character


@pytest.mark.slow
def test_usage_snippet_runs_as_written(generated, tmp_path):
    directory, card, _ = generated
    snippet = usage_snippet(card)
    assert str(directory.resolve()) in snippet
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, check=False, env=env, timeout=300,
        stdin=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = eval(result.stdout.strip().splitlines()[-1])  # the snippet prints the top-5 tokens
    assert isinstance(predicted, list) and len(predicted) == 5


@pytest.mark.parametrize(
    ("languages", "fields", "meta_learning", "expected"),
    [
        (["te"], dict(), False, "Mono"),
        (["en", "te"], dict(), False, "JointPair"),
        (["en", "hi", "mr"], dict(), False, "JointTri"),
        (["en", "te"], dict(language_modules="ffn"), False, "JointPair + ffn"),
        (["en", "te"], dict(language_modules="attention"), False, "JointPair + attn"),
        (["en", "te"], dict(language_modules="adapters"), False, "JointPair + adpt"),
        (
            ["en", "te"],
            dict(language_modules="adapters", shared_adapters=True),
            False,
            "JointPair + share adpt",
        ),
        (["en", "te"], dict(language_modules="adapters"), True, "JointPair + meta adpt"),
        (["en", "te"], dict(language_modules=["ffn", "adapters"]), False, "JointPair + ffn + adpt"),
        (["en", "te"], dict(language_modules=["adapters", "ffn"]), True, "JointPair + ffn + meta adpt"),
        (
            ["en", "te"],
            dict(language_modules=["attention", "adapters"], shared_adapters=True),
            False,
            "JointPair + attn + share adpt",
        ),
        (["en", "te"], dict(language_modules="ffn"), True, "JointPair + ffn (meta-learned)"),
    ],
)
def test_variant_names_follow_the_paper(languages, fields, meta_learning, expected):
    config = MetaXLMConfig(
        vocab_size=99, hidden_size=32, num_attention_heads=4, languages=languages, **fields
    )
    assert variant_name(config, meta_learning) == expected


@pytest.mark.parametrize("language_modules", ["adapters", ["ffn", "adapters"]])
def test_adapter_models_get_the_adapter_row(language_modules):
    config = MetaXLMConfig(
        vocab_size=99, hidden_size=32, num_attention_heads=4, languages=["en", "te"],
        language_modules=language_modules, adapter_reduction_factor=4,
    )  # fmt: skip
    table = architecture_table(config)
    assert "| adapter bottleneck | 8 (per language) |" in table
    kinds = "ffn, adapters" if isinstance(language_modules, list) else "adapters"
    assert f"| language-specific modules | {kinds} |" in table


def test_models_without_adapters_have_no_adapter_row():
    config = MetaXLMConfig(
        vocab_size=99, hidden_size=32, num_attention_heads=4, languages=["en", "te"], language_modules=["ffn"]
    )
    assert "adapter bottleneck" not in architecture_table(config)


def test_meta_learning_without_language_parameters_is_an_error():
    config = MetaXLMConfig(vocab_size=99, hidden_size=32, num_attention_heads=4, languages=["en", "te"])
    with pytest.raises(ValueError, match="meta_learning=True.*language_modules='none'"):
        variant_name(config, meta_learning=True)


def test_bad_metrics_file_is_named(generated, tmp_path):
    directory, _, _ = generated
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({"task": "ner", "scores": {}}))
    with pytest.raises(ValueError, match=f"{bad}.*'setting'"):
        write_model_card(directory, metrics_files=[bad])
    unknown = tmp_path / "unknown_task.json"
    unknown.write_text(json.dumps({"task": "parsing", "setting": "within", "scores": {"te": {"las": 1.0}}}))
    with pytest.raises(ValueError, match="unknown_task.json.*'parsing'"):
        write_model_card(directory, metrics_files=[unknown])


def test_code_commit_outside_a_git_checkout_says_unknown(tmp_path):
    assert code_commit(tmp_path).startswith("unknown")


def test_every_card_in_model_cards_parses():
    cards = [path for path in sorted(MODEL_CARDS.rglob("*.md")) if path.name not in NOT_CARDS]
    for path in cards:
        card = ModelCard.load(path)
        assert card.data.language, f"{path}: no language metadata"
        assert card.data.library_name == "transformers", path
        for result in card.data.eval_results or []:
            assert isinstance(result.metric_value, (int, float)), path
            assert result.dataset_config in card.data.language, (path, result.dataset_config)
        compile(usage_snippet(card), str(path), "exec")
    assert (MODEL_CARDS / "TEMPLATE.md").is_file() and (MODEL_CARDS / "README.md").is_file()


@pytest.mark.slow
def test_usage_snippet_of_a_fine_tuned_head_runs_as_written(tmp_path):
    from meta_xlm.modeling_meta_xlm import MetaXLMForTokenClassification

    directory = tmp_path / "ner"
    save_tiny_checkpoint(directory, languages=["en", "te"])
    MetaXLMForTokenClassification.from_pretrained(directory, num_labels=3).save_pretrained(directory)
    card = ModelCard.load(write_model_card(directory))
    assert card.data.pipeline_tag == "token-classification"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", usage_snippet(card)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert eval(result.stdout.strip().splitlines()[-1])["logits"][-1] == 3  # (batch, length, num_labels)
