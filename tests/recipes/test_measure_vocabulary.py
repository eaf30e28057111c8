"""recipes/measure_vocabulary.py as a user runs it: a pretraining YAML in, one CSV row per size and language out."""

import csv
import subprocess
import sys
from pathlib import Path

import yaml

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "measure_vocabulary.py"


def test_a_larger_vocabulary_packs_more_characters_into_each_token(shared_data, tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump({"languages": ["en", "sw"], "text_dir": str(shared_data("text")),
                                      "validation_sentences": 31}))  # fmt: skip
    output = tmp_path / "vocabulary.csv"
    command = [sys.executable, str(RECIPE), "--pretrain_config", str(config), "--vocab_sizes", "400", "900",
               "--tokenizer_training_sentences", "2000", "--held_out_sentences", "29", "--output", str(output)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(output.open(encoding="utf-8")))
    assert [(row["vocab_size"], row["language"]) for row in rows] == [
        ("400", "en"), ("400", "sw"), ("900", "en"), ("900", "sw")]  # fmt: skip
    assert {row["held_out_sentences"] for row in rows} == {"29"}
    assert {float(row["unk_rate"]) for row in rows} == {0.0}  # byte-level BPE: every string has tokens
    for language in ("en", "sw"):
        small, large = (row for row in rows if row["language"] == language)
        assert float(large["chars_per_token"]) > float(small["chars_per_token"]), language
        assert float(large["tokens_per_word"]) < float(small["tokens_per_word"]), language
        assert int(large["distinct_tokens"]) > int(small["distinct_tokens"]), language


def test_a_config_without_languages_is_named(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text("text_dir: somewhere\n")
    command = [sys.executable, str(RECIPE), "--pretrain_config", str(config), "--output", str(tmp_path / "v.csv")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode != 0
    assert f"{config} has no `languages`" in result.stderr, result.stderr[-2000:]
