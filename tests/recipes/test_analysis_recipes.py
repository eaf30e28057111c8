"""The analysis recipes as subprocesses, on a tiny MetaXLM pretrained here on real en + sw text."""

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.callbacks import LanguagePerplexityCallback
from meta_xlm.data import (
    MLMCollator,
    tokenize_into_blocks,
    train_shared_tokenizer,
)
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM

REPO = Path(__file__).resolve().parents[2]
SENTENCES = 4000  # per language
BLOCK = 64
LANGUAGES = ["en", "sw"]
SOURCES = {"en": "globalvoices_opus_v2017q3.en-sw.en.txt.gz", "sw": "voa_swahili_lacuna.txt.gz"}


def run_recipe(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "recipes" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from conftest import shared_data_path

    return pretrain_tiny(tmp_path_factory.mktemp("pretrained"), shared_data_path)


def pretrain_tiny(root: Path, shared_data_path) -> tuple[Path, dict[str, Path]]:
    """A 2-layer MLM (hidden 64) pretrained 150 steps on en + sw (JointPair), with checkpoints every 50 steps:
    (run folder, {lang: text file})."""
    texts = {}
    for language in LANGUAGES:
        with gzip.open(
            shared_data_path("text", language, SOURCES[language]), "rt", encoding="utf-8"
        ) as handle:
            lines = [line.strip() for _, line in zip(range(SENTENCES), handle) if line.strip()]
        texts[language] = root / f"{language}.txt"
        texts[language].write_text("\n".join(lines) + "\n", encoding="utf-8")
    sentences = {
        lang: Dataset.from_dict({"text": texts[lang].read_text().splitlines()}) for lang in LANGUAGES
    }
    tokenizer = train_shared_tokenizer(
        sentences, vocab_size=600, temperature=1.0, num_sentences=4000, seed=0, show_progress=False
    )
    blocks = {
        lang: tokenize_into_blocks(sentences[lang], tokenizer, BLOCK, i) for i, lang in enumerate(LANGUAGES)
    }
    train = {lang: blocks[lang].select(range(64, len(blocks[lang]))) for lang in LANGUAGES}
    validation = {lang: blocks[lang].select(range(64)) for lang in LANGUAGES}
    from datasets import concatenate_datasets

    torch.manual_seed(0)
    config = MetaXLMConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=BLOCK + 2,
        languages=LANGUAGES,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = MetaXLMForMaskedLM(config)
    run_dir = root / "jointpair"
    args = TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        max_steps=150,
        learning_rate=5e-3,
        warmup_steps=20,
        lr_scheduler_type="constant_with_warmup",
        logging_steps=10,
        eval_strategy="steps",
        eval_steps=50,
        save_steps=50,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=concatenate_datasets(list(train.values())).shuffle(seed=0),
        eval_dataset=validation,
        data_collator=MLMCollator(tokenizer),
        processing_class=tokenizer,
        callbacks=[LanguagePerplexityCallback(LANGUAGES)],
    )
    trainer.train()
    trainer.save_model(str(run_dir))
    return run_dir, texts


@pytest.mark.slow
def test_analyze_masks_writes_pi_figure_and_csv(pretrained, tmp_path):
    """The recipe's outputs, not the paper's finding: at this size (150 pretraining steps, 200 mask steps) which
    pair's masks are closer is noise — en-en vs en-sw flipped between 1 and 2 torch threads."""
    run_dir, texts = pretrained
    out = tmp_path / "masks"
    result = run_recipe(
        "analyze_masks.py",
        "--config",
        str(REPO / "recipes/configs/analysis/masks_tiny.yaml"),
        "--model_name_or_path",
        str(run_dir),
        "--output_dir",
        str(out),
        "--corpus_files",
        f"en={texts['en']}",
        f"sw={texts['sw']}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("pi_en", "pi_en_2", "pi_sw"):
        pi = load_file(str(out / f"{name}.safetensors"))["log_alpha"]
        assert pi.shape == (2 * 4 + 2 * 128,) and torch.isfinite(pi).all()
    assert (out / "mask_similarity.png").stat().st_size > 10_000
    assert (out / "mask_extremes_sw.png").is_file()
    with (out / "mask_similarity.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    overall = {(row["pair"], row["sublayer"]): float(row["cosine"]) for row in rows if row["layer"] == "all"}
    assert {(pair, sub) for pair in ("en-en#2", "en-sw") for sub in ("attention", "ffn")} <= set(overall), overall
    assert all(-1.0 <= cosine <= 1.0 for cosine in overall.values()), overall


@pytest.mark.slow
def test_analyze_gradients_over_checkpoints(pretrained, tmp_path):
    run_dir, texts = pretrained
    out = tmp_path / "gradients"
    result = run_recipe(
        "analyze_gradients.py",
        "--config",
        str(REPO / "recipes/configs/analysis/gradients_tiny.yaml"),
        "--run_dir",
        str(run_dir),
        "--output_dir",
        str(out),
        "--corpus_files",
        f"en={texts['en']}",
        f"sw={texts['sw']}",
        "--matrix",
        "true",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with (out / "gradient_matrix.csv").open() as handle:
        matrix = list(csv.DictReader(handle))
    # en, sw and en#2 (the second English batch) against each other, per checkpoint and segment
    assert {(r["language_a"], r["language_b"]) for r in matrix} == {(a, b) for a in ("en", "sw", "en#2") for b in ("en", "sw", "en#2")}
    assert (out / "gradient_matrix.png").is_file()
    with (out / "gradient_conflict.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({int(row["step"]) for row in rows}) == [50, 100, 150]
    overall = {(int(r["step"]), r["pair"]): float(r["cosine"]) for r in rows if r["segment"] == "all"}
    print("gradient cosine (all shared parameters):", overall)
    assert all(-1 <= value <= 1 for value in overall.values())
    assert (out / "gradient_conflict.png").is_file() and list((out / "tensorboard").glob("events.*"))


@pytest.mark.slow
def test_requested_language_missing_from_checkpoint_is_a_clear_error(pretrained, tmp_path):
    run_dir, texts = pretrained
    result = run_recipe(
        "analyze_masks.py",
        "--model_name_or_path",
        str(run_dir),
        "--output_dir",
        str(tmp_path),
        "--languages",
        "en",
        "hi",
        "--corpus_files",
        f"en={texts['en']}",
        f"hi={texts['en']}",
    )
    assert result.returncode != 0
    assert "requested language(s) ['hi'] are not among them" in result.stderr
    assert "['en', 'sw']" in result.stderr


@pytest.mark.slow
def test_group_spec_matching_no_parameter_is_a_clear_error(pretrained, tmp_path):
    run_dir, texts = pretrained
    result = run_recipe(
        "analyze_masks.py",
        "--model_name_or_path",
        str(run_dir),
        "--output_dir",
        str(tmp_path),
        "--languages",
        "en",
        "sw",
        "--corpus_files",
        f"en={texts['en']}",
        f"sw={texts['sw']}",
        "--mask_groups",
        r"ffn:neuron:roberta\.encoder\.layer\.(?P<layer>\d+)\.mlp\.weight",
    )
    assert result.returncode != 0
    assert "matches no parameter of MetaXLMForMaskedLM" in result.stderr


def write_finetune_record(path: Path, model: str, task: str, setting: str, scores: dict) -> Path:
    """A metrics record in recipes/finetune.py's documented format (meta_xlm.tasks.tables docstring)."""
    record = {
        "task": task,
        "setting": setting,
        "model": model,
        "main_metric": "f1",
        "scores": {lang: {"f1": value} for lang, value in scores.items()},
    }
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


@pytest.mark.slow
def test_report_renders_from_pretraining_logs_and_finetune_metrics(pretrained, tmp_path):
    run_dir, _ = pretrained
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    write_finetune_record(metrics / "mono_sw.json", "Mono", "ner", "within", {"sw": 52.5})
    write_finetune_record(metrics / "joint_sw.json", "JointPair", "ner", "within", {"sw": 52.8, "en": 80.0})
    write_finetune_record(metrics / "mono_te.json", "Mono", "pos", "within", {"te": 88.0})
    write_finetune_record(metrics / "joint_te.json", "JointPair", "pos", "within", {"te": 86.5})
    write_finetune_record(metrics / "zs.json", "JointPair", "ner", "zero_shot", {"sw": 40.0})
    out = tmp_path / "report"
    result = run_recipe(
        "report.py",
        "--output_dir",
        str(out),
        "--finetune_metrics",
        str(metrics / "*.json"),
        "--pretraining_runs",
        f"JointPair={run_dir}",
        f"JointPair-again={run_dir}",
        "--perplexity_languages",
        "en",
        "sw",
        "--loss_runs",
        "JointPair",
        "--loss_max_step",
        "100",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with (out / "interference.csv").open() as handle:
        rows = {(r["task"], r["language"]): r for r in csv.DictReader(handle)}
    assert set(rows) == {
        ("ner", "sw"),
        ("pos", "te"),
    }  # en has no Mono score, zero-shot is not within-language
    assert rows[("pos", "te")]["negative_interference"] == "True"
    assert float(rows[("pos", "te")]["difference"]) == pytest.approx(-1.5)
    assert rows[("ner", "sw")]["negative_interference"] == "False"
    with (out / "perplexity_sw.csv").open() as handle:
        steps = sorted({int(r["step"]) for r in csv.DictReader(handle)})
    assert steps == [50, 100, 150]
    with (out / "training_loss.csv").open() as handle:
        losses = [float(r["loss"]) for r in csv.DictReader(handle)]
    assert len(losses) == 10 and losses[-1] < losses[0]
    assert (out / "perplexity_en.png").is_file() and "Negative interference" in (
        out / "report.md"
    ).read_text()


def test_report_without_mono_record_is_a_clear_error(tmp_path):
    write_finetune_record(tmp_path / "joint.json", "JointPair", "ner", "within", {"sw": 52.8})
    result = run_recipe(
        "report.py", "--output_dir", str(tmp_path / "out"), "--finetune_metrics", str(tmp_path / "joint.json")
    )
    assert result.returncode != 0
    assert "no within-language record of mono_model='Mono'; models found: ['JointPair']" in result.stderr
