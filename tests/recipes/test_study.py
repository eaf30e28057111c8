"""recipes/study.py end to end on a micro grid: two models (random init, JointPair) × POS sw within-language ×
one seed, 20 pretraining steps of the tiny config; then a rerun that must skip every cell, an interrupted
fine-tuning cell (no record, a half-written metrics file) that must be redone, and a fresh clone (records, no
runs_dir) that must rebuild the same results without running anything."""

import csv
import json
import math
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT, shared_data_path

from meta_xlm.study_report import RESULT_FIELDS

pytestmark = pytest.mark.slow

TINY = str(REPO_ROOT / "recipes" / "configs" / "tiny_joint_pair.yaml")
MICRO_PRETRAIN = {"max_steps": 20, "eval_steps": 10, "save_steps": 10, "report_to": [], "disable_tqdm": True,
                  "subsample": ["en=600", "sw=600"]}  # fmt: skip


def micro_study(tmp_path) -> dict:
    text = shared_data_path("text")
    return {
        "name": "micro",
        "runs_dir": str(tmp_path / "runs"),
        "results_dir": str(tmp_path / "results"),
        "models": [
            {"name": "random_init", "config": TINY, "seeds": [0],
             "overrides": {**MICRO_PRETRAIN, "text_dir": str(text), "learning_rate": 0.0, "max_steps": 1,
                           "eval_strategy": "no", "save_strategy": "no"}},
            {"name": "joint_pair", "paper_row": "JointPair", "config": TINY, "seeds": [0],
             "overrides": {**MICRO_PRETRAIN, "text_dir": str(text)}},
        ],  # fmt: skip
        "finetune": {"batch_sizes": [8], "learning_rates": [5e-4], "epochs": 1, "max_train_examples": 24,
                     "max_eval_examples": 16, "max_seq_length": 64, "use_cpu": True, "disable_tqdm": True,
                     "report_to": [], "data_dir": str(shared_data_path())},  # fmt: skip
        "tasks": [{"task": "pos", "setting": "within", "train_language": "sw", "eval_languages": ["sw"]}],
        "figures": {"perplexity_languages": ["sw"], "loss_models": ["joint_pair"], "loss_max_step": 20},
    }


def run_study(study_file, expect_success=True):
    command = [sys.executable, str(REPO_ROOT / "recipes" / "study.py"), "--study", str(study_file)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    assert (completed.returncode == 0) == expect_success, completed.stderr[-3000:]
    return completed.stderr


def test_study_runs_skips_complete_cells_and_redoes_interrupted_ones(tmp_path):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(micro_study(tmp_path)))
    log = run_study(study_file)
    assert log.count("cell: ") == 4  # 2 pretraining + 2 fine-tuning cells

    results = tmp_path / "results"
    with (results / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == RESULT_FIELDS
    f1 = {(r["model"], r["metric"]): float(r["value"]) for r in rows if r["task"] == "pos"}
    assert set(f1) == {(m, k) for m in ("random_init", "joint_pair") for k in ("f1", "accuracy")}
    steps = {r["model"]: int(r["pretrain_steps"]) for r in rows}
    assert steps == {"random_init": 1, "joint_pair": 20}
    tokens = {r["model"]: r["tokens_seen"] for r in rows}
    assert tokens["joint_pair"].startswith("en=") and " sw=" in tokens["joint_pair"]
    report = (results / "report.md").read_text()
    assert "4 of 4 cells complete" in report and "| joint_pair |" in report
    assert "| pretraining helps at all |" in report and "inconclusive (one seed: no spread)" in report
    assert (results / "fig2_perplexity_sw.png").is_file() and (results / "fig4c_early_loss.csv").is_file()

    # a rerun runs no cell
    assert run_study(study_file).count("cell: ") == 0

    # an interrupted fine-tuning cell: record gone, metrics half-written -> redone, not read
    cell = tmp_path / "runs" / "finetune" / "joint_pair" / "seed0" / "pos_within_sw"
    record = results / "cells" / "finetune" / "joint_pair" / "seed0" / "pos_within_sw.json"
    record.unlink()
    (cell / "metrics.json").write_text('{"task": "pos", "scor')
    log = run_study(study_file)
    assert log.count("cell: ") == 1
    assert json.loads((cell / "metrics.json").read_text())["task"] == "pos"
    assert json.loads(record.read_text())["kind"] == "finetune"

    # a fresh clone: the committed records, no checkpoints -> nothing runs, the same results and figures
    before = {name: (results / name).read_bytes() for name in ("results.csv", "fig4c_early_loss.csv", "fig2_perplexity_sw.csv")}
    shutil.rmtree(tmp_path / "runs")
    assert run_study(study_file).count("cell: ") == 0
    assert {name: (results / name).read_bytes() for name in before} == before
    # ... and a cell that needs the gone checkpoint says which record to delete
    record.unlink()
    log = run_study(study_file, expect_success=False)
    assert "pretrained model is not in" in log and "joint_pair/seed0.json to pretrain it again" in log


def test_a_study_that_keeps_its_models_re_fine_tunes_a_fresh_clone_to_the_same_scores(tmp_path):
    """keep_models: each pretraining cell commits its final model (half precision) beside the records and the
    fine-tuning cells read it; with runs_dir gone (a fresh clone), a fine-tuning cell run again from the kept model
    gives the recorded scores, and its record holds every grid point's dev curve and the convergence flag."""
    values = micro_study(tmp_path)
    values["keep_models"] = True
    values["finetune"] = {**values["finetune"], "epochs": 3, "learning_rates": [5e-4, 1e-3]}
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(values))
    assert run_study(study_file).count("cell: ") == 4

    results = tmp_path / "results"
    pretrain = json.loads((results / "cells" / "pretrain" / "joint_pair" / "seed0.json").read_text())
    kept = results / "models" / "joint_pair" / "seed0"
    assert pretrain["kept_model"]["folder"] == str(kept) and (kept / "tokenizer.json").is_file()
    # one uninterrupted run: it timed every step; its CPU time is the recipe's own, not the study's
    assert pretrain["timed_steps"] == pretrain["steps"] == 20 and 0 < pretrain["cpu_time_s"]
    record_file = results / "cells" / "finetune" / "joint_pair" / "seed0" / "pos_within_sw.json"
    record = json.loads(record_file.read_text())
    assert record["config"]["model_name_or_path"] == str(kept)
    assert [len(point["epochs"]) for point in record["dev_curves"]] == [3, 3]
    assert record["selection"]["epochs"] == 3 and 1 <= record["selection"]["best_epoch"] <= 3
    assert record["converged"] == record["selection"]["converged"] and isinstance(record["converged"], bool)
    with (results / "results.csv").open() as handle:
        flags = {row["converged"] for row in csv.DictReader(handle) if row["task"] == "pos"}
    assert flags == {"yes" if record["converged"] else "no"}

    shutil.rmtree(tmp_path / "runs")  # a fresh clone: records and kept models only
    record_file.unlink()
    assert run_study(study_file).count("cell: ") == 1
    again = json.loads(record_file.read_text())
    assert again["scores"] == record["scores"] and again["dev_curves"] == record["dev_curves"]

    # characters per token, the scale of bits per character: measured by pretraining on its validation text, and
    # measured again for a record from before that (the split redone from the recorded config, the kept tokenizer)
    measured = pretrain["characters_per_token"]
    assert set(measured) == {"en", "sw"} and all(1.0 < ratio < 10.0 for ratio in measured.values())
    pretrain_file = results / "cells" / "pretrain" / "joint_pair" / "seed0.json"
    pretrain_file.write_text(json.dumps({k: v for k, v in pretrain.items() if k != "characters_per_token"}))
    command = [sys.executable, str(REPO_ROOT / "recipes" / "study.py"), "--study", str(study_file),
               "--measure_characters_per_token", "true"]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    assert completed.returncode == 0 and "cell: " not in completed.stderr, completed.stderr[-3000:]
    assert json.loads(pretrain_file.read_text())["characters_per_token"] == measured
    with (results / "results.csv").open() as handle:
        bits = {row["language"]: float(row["value"]) for row in csv.DictReader(handle)
                if row["model"] == "joint_pair" and row["metric"] == "bits_per_character"}  # fmt: skip
    assert bits == pytest.approx({language: math.log2(pretrain["perplexity"][language]) / measured[language]
                                  for language in measured})  # fmt: skip


def test_measuring_characters_per_token_names_a_record_whose_tokenizer_is_gone_and_leaves_it(tmp_path):
    from meta_xlm.study import load_study, record_path, write_record

    values = {"name": "gone", "runs_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
              "models": [{"name": "joint_pair", "config": TINY, "seeds": [0]}], "tasks": []}  # fmt: skip
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(values))
    record = {"kind": "pretrain", "steps": 20, "tokens_seen": {"en": 1, "sw": 1}, "perplexity": {"en": 9.0, "sw": 9.0},
              "wall_time_s": 1.0, "history": [], "config": {"languages": ["en", "sw"]}}  # fmt: skip
    path = record_path(load_study(study_file), "pretrain", "joint_pair", 0)
    write_record(path, record)
    command = [sys.executable, str(REPO_ROOT / "recipes" / "study.py"), "--study", str(study_file),
               "--measure_characters_per_token", "true"]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "joint_pair seed 0: no kept model or run folder holds its tokenizer" in completed.stderr
    assert "0 pretraining records completed" in completed.stderr
    assert json.loads(path.read_text()) == record
