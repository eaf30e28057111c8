"""recipes/report.py on the real outputs of recipes/pretrain.py and recipes/finetune.py (issue 7).

A Mono (sw) and a JointPair (en + sw) tiny model are pretrained for a few steps on real ../shared/data text
(the Mono run reuses the JointPair tokenizer to save its training), each is fine-tuned for 2 steps on PAN-X sw
NER (within-language), and the report must render from those files: the interference table carries the very
scores the fine-tuning metrics files hold, Fig. 2 and Fig. 4c come from the pretraining logs.
"""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

RECIPES = REPO_ROOT / "recipes"
MAX_STEPS, LOGGING_STEPS, EVAL_STEPS = 12, 3, 5  # evals at 5, 10, then the recipe's final one at 12
FEW_STEPS = [
    "--max_steps", str(MAX_STEPS),
    "--logging_steps", str(LOGGING_STEPS),
    "--eval_steps", str(EVAL_STEPS),
    "--validation_sentences", "32",
    "--save_strategy", "no",
    "--report_to", "none",
    "--disable_tqdm", "true",
]  # fmt: skip
SMALL_FINETUNE = [
    "--task", "ner", "--setting", "within", "--train_language", "sw",
    "--batch_sizes", "8", "--learning_rates", "5e-4", "--epochs", "1", "--max_steps", "2",
    "--max_train_examples", "16", "--max_eval_examples", "16", "--max_seq_length", "32",
    "--use_cpu", "true", "--disable_tqdm", "true",
]  # fmt: skip


def run_recipe(script: str, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, str(RECIPES / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stderr[-3000:]}"


def pretrain(shared_data, tmp_path: Path, name: str, *extra: str) -> Path:
    output_dir = tmp_path / name
    run_recipe(
        "pretrain.py",
        "--config", str(RECIPES / "configs" / "tiny_joint_pair.yaml"),
        "--text_dir", str(shared_data("text")),
        "--data_cache_dir", str(tmp_path / "cache"),
        "--output_dir", str(output_dir),
        *FEW_STEPS,
        *extra,
    )  # fmt: skip
    return output_dir


def finetune(shared_data, checkpoint: Path, model_name: str, output_dir: Path) -> dict:
    run_recipe(
        "finetune.py",
        "--model_name_or_path", str(checkpoint),
        "--model_name", model_name,
        "--data_dir", str(shared_data()),
        "--output_dir", str(output_dir),
        *SMALL_FINETUNE,
    )  # fmt: skip
    return json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def logged_history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]


@pytest.mark.slow
def test_report_renders_from_real_pretrain_and_finetune_outputs(shared_data, tmp_path):
    joint = pretrain(shared_data, tmp_path, "jointpair", "--subsample", "en=300", "sw=300",
                     "--vocab_size", "300", "--tokenizer_training_sentences", "600")  # fmt: skip
    mono = pretrain(shared_data, tmp_path, "mono_sw", "--languages", "sw", "--subsample", "sw=300",
                    "--tokenizer_name_or_path", str(joint))  # fmt: skip
    records = {
        "Mono": finetune(shared_data, mono, "Mono", tmp_path / "ft_mono"),
        "JointPair": finetune(shared_data, joint, "JointPair", tmp_path / "ft_joint"),
    }
    out = tmp_path / "report"
    run_recipe(
        "report.py",
        "--output_dir", str(out),
        "--finetune_metrics", str(tmp_path / "ft_*" / "metrics.json"),
        "--pretraining_runs", f"Mono={mono}", f"JointPair={joint}",
        "--perplexity_languages", "sw",
        "--loss_runs", "JointPair", "Mono",
    )  # fmt: skip

    # the interference table holds the scores the fine-tuning recipe wrote, unrounded
    mono_f1, joint_f1 = (records[name]["scores"]["sw"]["f1"] for name in ("Mono", "JointPair"))
    (row,) = read_csv(out / "interference.csv")
    assert (row["task"], row["language"], row["model"]) == ("ner", "sw", "JointPair")
    assert float(row["mono"]) == mono_f1 and float(row["score"]) == joint_f1
    assert float(row["difference"]) == pytest.approx(joint_f1 - mono_f1, abs=1e-4)
    assert row["negative_interference"] == str(joint_f1 < mono_f1)
    markdown = (out / "interference.md").read_text(encoding="utf-8")
    assert f"| ner | sw | JointPair | {mono_f1} | {joint_f1} |" in markdown

    # Fig. 2: the sw validation perplexity each pretraining run logged to trainer_state.json (= exp of its
    # loss), both runs in one panel
    perplexity = read_csv(out / "perplexity_sw.csv")
    for name, run_dir in (("Mono", mono), ("JointPair", joint)):
        history = logged_history(run_dir)
        logged = [(e["step"], e["eval_sw_perplexity"]) for e in history if "eval_sw_loss" in e]
        assert logged and all(ppl == pytest.approx(math.exp(e["eval_sw_loss"])) for e, (_, ppl) in zip(
            [e for e in history if "eval_sw_loss" in e], logged)), name
        plotted = [(int(r["step"]), float(r["perplexity"])) for r in perplexity if r["run"] == name]
        # one point per step, although the recipe's final evaluate() repeats the Trainer's eval at the last step
        assert [step for step, _ in plotted] == [5, 10, MAX_STEPS], (name, plotted)
        assert dict(plotted) == pytest.approx(dict(logged)), name

    # Fig. 2 per character: each run's perplexity with its own tokenizer's scale (Mono-sw reuses JointPair's here)
    bits = read_csv(out / "bits_per_character_sw.csv")
    for name, run_dir in (("Mono", mono), ("JointPair", joint)):
        scale = json.loads((run_dir / "characters_per_token.json").read_text())["sw"]
        plotted = {int(r["step"]): float(r["bits per character"]) for r in bits if r["run"] == name}
        expected = {int(r["step"]): math.log2(float(r["perplexity"])) / scale for r in perplexity if r["run"] == name}
        assert plotted == pytest.approx(expected), name

    # Fig. 4c: the training loss logged every LOGGING_STEPS steps
    losses = read_csv(out / "training_loss.csv")
    for name in ("Mono", "JointPair"):
        steps = [int(r["step"]) for r in losses if r["run"] == name]
        assert steps == list(range(LOGGING_STEPS, MAX_STEPS + 1, LOGGING_STEPS)), (name, steps)

    for figure in ("perplexity_sw.png", "training_loss.png"):
        assert (out / figure).stat().st_size > 5_000, figure
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "![](perplexity_sw.png)" in report and "![](training_loss.png)" in report
