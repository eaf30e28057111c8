"""Verdicts of a study's claims from results rows (meta_xlm.study_report), and the study file's checks."""

from pathlib import Path

import pytest
import yaml

from meta_xlm.study import load_study
from meta_xlm.study_report import Claim, verdict


def rows(model: str, values: list[float], metric: str = "f1", language: str = "sw") -> list[dict]:
    return [
        {"model": model, "seed": seed, "task": "pos", "setting": "within", "language": language,
         "metric": metric, "value": value}
        for seed, value in enumerate(values)
    ]  # fmt: skip


CLAIM = Claim("Mono > JointPair", "mono_sw", "joint_pair", "pos", "within", "sw", "f1")


def test_verdict_needs_an_effect_beyond_two_standard_errors():
    clear = verdict(CLAIM, rows("mono_sw", [80.0, 81.0, 82.0]) + rows("joint_pair", [70.0, 71.0, 72.0]))
    assert clear["verdict"] == "reproduced" and clear["effect"] == "+10"
    opposite = verdict(CLAIM, rows("mono_sw", [70.0, 71.0, 72.0]) + rows("joint_pair", [80.0, 81.0, 82.0]))
    assert opposite["verdict"] == "not reproduced (the opposite holds)"
    # effect 1, standard error sqrt(2 * 4 / 3) = 1.63: no difference with 3 seeds a side
    noisy = verdict(CLAIM, rows("mono_sw", [79.0, 81.0, 83.0]) + rows("joint_pair", [78.0, 80.0, 82.0]))
    assert noisy["verdict"] == "not reproduced (no difference beyond 2 spreads)" and noisy["spread"] == "1.6"
    two_seeds = verdict(CLAIM, rows("mono_sw", [79.0, 83.0]) + rows("joint_pair", [78.0, 82.0]))
    assert two_seeds["verdict"] == "inconclusive"


def test_verdict_without_cells_or_spread():
    assert verdict(CLAIM, rows("mono_sw", [80.0]))["verdict"] == "not yet run"
    one_seed = verdict(CLAIM, rows("mono_sw", [80.0]) + rows("joint_pair", [70.0]))
    assert one_seed["verdict"] == "inconclusive (one seed: no spread)"


def test_lower_is_better_and_language_pairs():
    claim = Claim("En-En > en-sw", "joint_pair", "joint_pair", "pos", "within", "en-en", "cos", worse_language="en-sw")
    data = rows("joint_pair", [0.5, 0.6, 0.7], "cos", "en-en") + rows("joint_pair", [0.1, 0.2, 0.3], "cos", "en-sw")
    assert verdict(claim, data)["verdict"] == "reproduced"
    perplexity = Claim("Mono lower", "mono_sw", "joint_pair", "pos", "within", "sw", "ppl", lower_is_better=True)
    data = rows("mono_sw", [100.0, 101.0, 102.0], "ppl") + rows("joint_pair", [150.0, 151.0, 152.0], "ppl")
    assert verdict(perplexity, data)["verdict"] == "reproduced"


def test_study_file_errors_name_the_entry_and_key(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text("languages: [en]\n")
    study = {"name": "s", "runs_dir": "r", "results_dir": "o",
             "models": [{"name": "a", "config": str(config), "seeds": [0], "optimiser": "sgd"}], "tasks": []}  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ValueError, match=r"models\[0\]: unknown key\(s\) \['optimiser'\]"):
        load_study(path)
    study["models"][0].pop("optimiser")
    study["figures"] = {"loss_models": ["b"]}
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(KeyError, match="no model 'b'"):
        load_study(path)


def test_a_complete_cell_of_another_configuration_is_an_error(tmp_path):
    from meta_xlm.study import is_complete, pretrain_config, pretrain_folder, record_path, write_record

    config = tmp_path / "pretrain.yaml"
    config.write_text("languages: [en]\nlearning_rate: 0.001\n")
    study_values = {"name": "s", "runs_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "o"),
                    "models": [{"name": "a", "config": str(config), "seeds": [0]}], "tasks": []}  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_values))
    study = load_study(path)
    assert study.records_dir == str(tmp_path / "o" / "cells")
    model = study.models[0]
    folder = pretrain_folder(study, "a", 0)
    assert not is_complete(study, "pretrain", model, 0, None)
    write_record(record_path(study, "pretrain", "a", 0), {"kind": "pretrain", "config": pretrain_config(model, 0, folder)})
    assert is_complete(study, "pretrain", model, 0, None)
    config.write_text("languages: [en]\nlearning_rate: 0.0005\n")
    with pytest.raises(ValueError, match=r"another configuration \(fields \['learning_rate'\] differ"):
        is_complete(study, "pretrain", model, 0, None)


def curve_study(tmp_path, seeds=(0, 1, 2)):
    config = tmp_path / "pretrain.yaml"
    config.write_text("languages: [en, sw]\n")
    values = {"name": "c", "runs_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
              "models": [{"name": "joint_pair", "config": str(config), "seeds": list(seeds)}], "tasks": []}  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(values))
    return load_study(path)


def test_figures_average_seeds_with_curves_and_seed_means_of_older_records(tmp_path):
    """Seeds 0 and 1 were recorded before records kept their curves: their mean curve (seed_mean_curves.csv)
    counts twice, seed 2's own curve once, so the figure is the mean over the three seeds."""
    from meta_xlm.analysis.report import loss_curve
    from meta_xlm.study import record_path, write_record
    from meta_xlm.study_report import mean_curve, seed_curves

    study = curve_study(tmp_path)
    for seed in (0, 1):
        write_record(record_path(study, "pretrain", "joint_pair", seed), {"kind": "pretrain", "history": None})
    history = [{"step": 25, "loss": 7.0}, {"step": 50, "loss": 4.0}, {"step": 50, "eval_sw_perplexity": 9.0}]
    write_record(record_path(study, "pretrain", "joint_pair", 2), {"kind": "pretrain", "history": history})
    means = Path(study.records_dir) / "seed_mean_curves.csv"
    means.write_text("curve,run,seeds,step,value\nloss,joint_pair,0 1,25,4.0\nloss,joint_pair,0 1,50,1.0\n"
                     "loss,joint_pair,0 1,75,0.5\nloss,other,0 1,25,100\n")  # fmt: skip
    curves = seed_curves(study, "joint_pair", "loss", loss_curve)
    assert sorted(weight for weight, _ in curves) == [1, 2]
    assert mean_curve(curves) == [(25, 5.0), (50, 2.0)]  # (2·4 + 7) / 3, (2·1 + 4) / 3; step 75: not in seed 2

    means.write_text("curve,run,seeds,step,value\nloss,joint_pair,1 2,25,4.0\n")  # seed 2 has its own curve
    with pytest.raises(ValueError, match=r"seed_mean_curves.csv: loss of joint_pair averages seeds \[1, 2\], but"):
        seed_curves(study, "joint_pair", "loss", loss_curve)


def test_pretraining_records_keep_only_the_curves_and_diagnostics_the_report_reads():
    from meta_xlm.study import curve_history

    history = [{"step": 25, "loss": 7.1, "grad_norm": 1.0, "learning_rate": 1e-4, "epoch": 0.1,
                "surgery_cosine_before/en-sw": -0.2, "surgery_cosine_after/en-sw": 0.0},
               {"step": 500, "eval_sw_loss": 6.0, "eval_sw_perplexity": 403.4, "eval_sw_runtime": 3.0},
               {"step": 525, "loss": 6.0, "meta_higher_order_ratio": 0.02, "meta_loss": 6.1,
                "meta_lookahead_share": 0.005, "meta_objective_languages": 2.0},
               {"step": 6000, "train_runtime": 100.0, "train_loss": 5.0}]  # fmt: skip
    assert curve_history(history) == [
        {"step": 25, "loss": 7.1, "surgery_cosine_before/en-sw": -0.2, "surgery_cosine_after/en-sw": 0.0},
        {"step": 500, "eval_sw_loss": 6.0, "eval_sw_perplexity": 403.4},
        {"step": 525, "loss": 6.0, "meta_higher_order_ratio": 0.02, "meta_lookahead_share": 0.005},
    ]


def test_the_report_averages_each_runs_training_diagnostics_over_its_logging_windows(tmp_path):
    from meta_xlm.study import record_path, write_record
    from meta_xlm.study_report import build_study_report, diagnostic_rows

    study = curve_study(tmp_path, seeds=(0, 1))
    record = {"kind": "pretrain", "steps": 50, "tokens_seen": {"en": 1, "sw": 1}, "perplexity": {"en": 9.0, "sw": 9.0},
              "wall_time_s": 1.0}  # fmt: skip
    history = [{"step": 25, "loss": 7.0, "surgery_cosine_before/en-sw": -0.3, "surgery_cosine_after/en-sw": 0.1},
               {"step": 50, "loss": 6.0, "surgery_cosine_before/en-sw": 0.1, "surgery_cosine_after/en-sw": float("nan")}]  # fmt: skip
    write_record(record_path(study, "pretrain", "joint_pair", 0), {**record, "history": history})
    write_record(record_path(study, "pretrain", "joint_pair", 1), {**record, "history": [{"step": 25, "loss": 7.0}]})
    values = {(r["seed"], r["metric"], r["language"]): r["value"] for r in diagnostic_rows(study)}
    # the mean over windows; a window whose cosine was undefined (NaN: a language without a batch) is left out
    assert values == pytest.approx({(0, "surgery_cosine_before", "en-sw"): -0.1, (0, "surgery_cosine_after", "en-sw"): 0.1})
    report = build_study_report(study).read_text()
    assert "### surgery_cosine_before (mean over the run's logging windows)" in report
    assert "| joint_pair | -0.100 (n=1) |" in report


def test_a_recorded_pretraining_without_its_checkpoint_names_the_record_to_delete(tmp_path):
    from meta_xlm.study import pretrained_model, record_path

    study = curve_study(tmp_path, seeds=(0,))
    with pytest.raises(FileNotFoundError, match=rf"recorded in {record_path(study, 'pretrain', 'joint_pair', 0)} but"):
        pretrained_model(study, study.models[0], 0)


def test_downstream_verdicts_wait_for_pretraining_to_beat_random_init():
    from meta_xlm.study_report import gate_on_pretraining

    def entry(claim, task, outcome, setting="within"):
        return {"claim": claim, "measure": f"{task} {setting} f1", "verdict": outcome}

    verdicts = [entry("pretraining helps at all", "pos", "inconclusive"), entry("Mono > JointPair", "pos", "reproduced"),
                entry("pretraining helps at all", "ner", "reproduced"), entry("Mono > JointPair", "ner", "reproduced"),
                entry("Mono lower", "pretrain", "reproduced"),
                # NER helped within-language only: a zero-shot claim waits for zero-shot transfer to show
                entry("pretraining helps at all", "ner", "not reproduced (no difference beyond 2 spreads)", "zero_shot"),
                entry("+ffn collapses zero-shot", "ner", "reproduced", "zero_shot")]  # fmt: skip
    gated = [v["verdict"] for v in gate_on_pretraining(verdicts)]
    assert gated == ["inconclusive", "inconclusive: pretraining's gain over random init not shown yet on pos within (would be: reproduced)",
                     "reproduced", "reproduced", "reproduced", "not reproduced (no difference beyond 2 spreads)",
                     "inconclusive: pretraining does not beat random init on ner zero_shot (would be: reproduced)"]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Beyond the paper: treatments (gradient surgery, loss weights) vs the tuned sampling temperature
# ---------------------------------------------------------------------------------------------------------

TREATMENTS_STUDY = "recipes/configs/study/small_en_sw_treatments.yaml"


ALL_SETTINGS = (("pos", "within"), ("pos", "zero_shot"), ("ner", "within"), ("ner", "zero_shot"))


def treatment_study(tmp_path, names: list[str], tasks: tuple[tuple[str, str], ...] = ALL_SETTINGS):
    config = tmp_path / "pretrain.yaml"
    config.write_text("languages: [en, sw]\n")
    values = {"name": "t", "runs_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
              "models": [{"name": name, "config": str(config), "seeds": [0, 1, 2]} for name in names],
              "tasks": [{"task": task, "setting": setting, "train_language": "sw" if setting == "within" else "en",
                         "eval_languages": ["sw"]} for task, setting in tasks]}  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(values))
    return load_study(path)


def answer(verdicts: list[dict], claim: str, measure: str = "pos within f1") -> dict:
    return next(v for v in verdicts if v["claim"] == claim and v["measure"] == measure)


NAMES = ["random_init", "temperature_1", "temperature_5", "pcgrad_layer", "adpt_gradvac_model", "adpt", "balanced_sum"]
BEATS = "a treatment beats the best temperature"
PLAIN_SUM = "surgery beats the plain sum of the same balanced steps"


def test_a_treatment_beating_the_best_temperature_by_more_than_two_spreads_is_a_yes(tmp_path):
    from meta_xlm.study_report import gate_on_pretraining, treatment_answers, treatment_verdicts

    study = treatment_study(tmp_path, NAMES)
    data = (rows("random_init", [10.0, 11.0, 12.0]) + rows("temperature_1", [60.0, 61.0, 62.0])
            + rows("temperature_5", [70.0, 71.0, 72.0]) + rows("pcgrad_layer", [80.0, 81.0, 82.0])
            + rows("adpt_gradvac_model", [75.0, 76.0, 77.0]))  # fmt: skip
    verdicts = treatment_answers(gate_on_pretraining(treatment_verdicts(study, data, "sw")))
    best = answer(verdicts, BEATS)
    # the best of each side: pcgrad_layer (81) vs temperature_5 (71), not temperature_1
    assert best["comparison"] == "pcgrad_layer sw vs temperature_5 sw"
    assert (best["verdict"], best["effect"], best["spread"]) == ("yes", "+10", "0.82")
    assert answer(verdicts, "pretraining helps at all")["verdict"] == "reproduced"
    assert answer(verdicts, "surgery on +adpt beats +adpt")["verdict"] == "not yet run"  # adpt has no cell
    assert answer(verdicts, PLAIN_SUM)["verdict"] == "not yet run"  # balanced_sum has no cell
    with_sum = data + rows("balanced_sum", [90.0, 91.0, 92.0])
    verdicts = treatment_answers(gate_on_pretraining(treatment_verdicts(study, with_sum, "sw")))
    # the plain sum is a treatment against the temperatures too, and the control of surgery on JointPair
    assert answer(verdicts, BEATS)["comparison"] == "balanced_sum sw vs temperature_5 sw"
    assert answer(verdicts, PLAIN_SUM)["comparison"] == "pcgrad_layer sw vs balanced_sum sw"
    assert answer(verdicts, PLAIN_SUM)["verdict"] == "no: the baseline is better"
    assert answer(verdicts, BEATS, "ner within f1")["verdict"] == "not yet run"
    # within noise (effect 1, standard error sqrt(8/2 + 8/2) = 2.8), two seeds a side: inconclusive
    noisy = rows("random_init", [10.0, 11.0]) + rows("temperature_5", [80.0, 84.0]) + rows("pcgrad_layer", [81.0, 85.0])
    noisy_answer = answer(treatment_answers(gate_on_pretraining(treatment_verdicts(study, noisy, "sw"))), BEATS)
    assert (noisy_answer["verdict"], noisy_answer["effect"], noisy_answer["spread"]) == ("inconclusive", "+1", "2.8")


def test_treatment_answers_no_and_gate(tmp_path):
    from meta_xlm.study_report import gate_on_pretraining, treatment_answers, treatment_verdicts

    study = treatment_study(tmp_path, NAMES)
    same = (rows("random_init", [10.0, 11.0, 12.0]) + rows("temperature_1", [79.0, 81.0, 83.0])
            + rows("pcgrad_layer", [78.0, 80.0, 82.0]))  # fmt: skip
    verdicts = treatment_answers(gate_on_pretraining(treatment_verdicts(study, same, "sw")))
    assert answer(verdicts, BEATS)["verdict"] == "no: no difference beyond 2 spreads"
    worse = (rows("random_init", [10.0, 11.0, 12.0]) + rows("temperature_1", [80.0, 81.0, 82.0])
             + rows("pcgrad_layer", [70.0, 71.0, 72.0]))  # fmt: skip
    verdicts = treatment_answers(gate_on_pretraining(treatment_verdicts(study, worse, "sw")))
    assert answer(verdicts, BEATS)["verdict"] == "no: the baseline is better"
    # pretrained rows no better than random init: the treatment question says nothing yet
    ungated = (rows("random_init", [80.0, 81.0, 82.0]) + rows("temperature_1", [60.0, 61.0, 62.0])
               + rows("pcgrad_layer", [70.0, 71.0, 72.0]))  # fmt: skip
    verdicts = treatment_answers(gate_on_pretraining(treatment_verdicts(study, ungated, "sw")))
    assert answer(verdicts, BEATS)["verdict"].startswith("inconclusive: pretraining does not beat random init on pos")


def test_a_study_shows_only_the_claims_it_has_rows_for(tmp_path):
    from meta_xlm.study_report import build_study_report

    treatments = build_study_report(treatment_study(tmp_path, NAMES)).read_text(encoding="utf-8")
    assert "Does any treatment beat the tuned-temperature baseline" in treatments
    assert "## Verdicts" not in treatments and "Mono > JointPair" not in treatments  # small_en_sw's claims
    paper = build_study_report(treatment_study(tmp_path, ["joint_pair", "random_init", "mono_sw"], (("pos", "within"),)))
    text = paper.read_text(encoding="utf-8")
    assert "Mono > JointPair within-language" in text and "+meta adpt" not in text and "treatment" not in text
    assert "| pos within f1 |" in text and "ner within f1" not in text and "gradients cosine" not in text  # not measured


def load_study_recipe():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "study.py"
    spec = importlib.util.spec_from_file_location("study_recipe_under_test", path)
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)  # registered first: its dataclasses look their module up
    return module


def test_the_treatments_study_file_is_valid_and_a_bad_row_is_named(tmp_path):
    study = load_study(TREATMENTS_STUDY)
    names = [model.name for model in study.models]
    assert {"temperature_1", "temperature_1.43", "temperature_5", "temperature_inf", "pcgrad_model",
            "gradvac_layer", "adpt_pcgrad_model", "adpt_gradvac_layer", "loss_weights_en1_sw2"} <= set(names)  # fmt: skip
    assert {model.config for model in study.models} == {"recipes/configs/study/small_pretrain.yaml"}
    assert study.tasks == load_study("recipes/configs/study/small_en_sw.yaml").tasks
    recipe = load_study_recipe()
    recipe.check_pretrain_rows(study)  # every row parses with recipes/pretrain.py's argument classes
    study.models[7].overrides = {"gradient_surgery": "foo"}
    with pytest.raises(ValueError, match=rf"model '{names[7]}'.*foo"):
        recipe.check_pretrain_rows(study)
    study.models[7].overrides = {"language_modules": "adapters", "meta_learning": True}  # no meta split
    with pytest.raises(ValueError, match=rf"model '{names[7]}'.*meta_validation_sentences"):
        recipe.check_pretrain_rows(study)


def test_treatment_rows_named_after_small_en_sw_rows_share_their_cells():
    """random_init, temperature_1.43 (runs: joint_pair) and adpt resolve to small_en_sw's folders and configurations
    for every cell, so one run serves both studies (and editing one study file alone is caught here, not after
    hours of running: a marker of another configuration is an error)."""
    from meta_xlm.study import cell_config, cell_record, pretrain_folder

    treatments, paper = load_study(TREATMENTS_STUDY), load_study("recipes/configs/study/small_en_sw.yaml")
    shared = {"random_init": "random_init", "temperature_1.43": "joint_pair", "adpt": "adpt"}
    for name, paper_name in shared.items():
        ours, theirs = treatments.model(name), paper.model(paper_name)
        assert ours.seeds == theirs.seeds
        for seed in ours.seeds:
            for task in [None, *treatments.tasks]:
                kind = "pretrain" if task is None else "finetune"
                assert cell_record(treatments, kind, ours, seed, task) == cell_record(paper, kind, theirs, seed, task)
                assert cell_config(treatments, kind, ours, seed, task) == cell_config(paper, kind, theirs, seed, task)
            assert pretrain_folder(treatments, ours.run_name, seed) == pretrain_folder(paper, theirs.run_name, seed)
    unshared = {m.run_name for m in treatments.models} - {m.run_name for m in paper.models}
    assert unshared == {m.name for m in treatments.models if m.name not in shared}


def test_two_rows_of_one_study_cannot_share_a_folder(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text("languages: [en]\n")
    models = [{"name": "a", "config": str(config), "seeds": [0]}, {"name": "b", "runs": "a", "config": str(config), "seeds": [0]}]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "runs_dir": "r", "results_dir": "o", "models": models, "tasks": []}))
    with pytest.raises(ValueError, match=r"share a cell folder .*\['a', 'a'\]"):
        load_study(path)


def test_a_row_fine_tunes_only_its_tasks_and_only_in_its_languages(tmp_path):
    """A Mono-sw row lists its within-language tasks; an unknown task name, or a task in a language the row was
    not pretrained on, is an error at load / --check time (it used to fail hours in, at the fine-tuning cell)."""
    from meta_xlm.study import cells

    config = tmp_path / "pretrain.yaml"
    config.write_text("languages: [en, sw]\n")
    tasks = [{"task": "pos", "setting": "within", "train_language": "sw", "eval_languages": ["sw"]},
             {"task": "pos", "setting": "zero_shot", "train_language": "en", "eval_languages": ["sw"]}]
    models = [{"name": "mono_sw", "config": str(config), "seeds": [0], "overrides": {"languages": ["sw"]},
               "tasks": ["pos_within_sw"]}]  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "runs_dir": "r", "results_dir": "o", "models": models, "tasks": tasks}))
    study = load_study(path)
    assert [(kind, task.name if task else None) for kind, _, _, task in cells(study)] == [
        ("pretrain", None), ("finetune", "pos_within_sw")]
    recipe = load_study_recipe()
    recipe.check_task_languages(study, study.models[0], ["sw"])
    study.models[0].tasks = None  # every task, the zero-shot one from English included
    with pytest.raises(ValueError, match=r"'mono_sw' is pretrained on \['sw'\], task 'pos_zero_shot_en' needs \['en'\]"):
        recipe.check_task_languages(study, study.models[0], ["sw"])
    models[0]["tasks"] = ["pos_within_te"]
    path.write_text(yaml.safe_dump({"name": "s", "runs_dir": "r", "results_dir": "o", "models": models, "tasks": tasks}))
    with pytest.raises(ValueError, match=r"'mono_sw': tasks \['pos_within_te'\] are not in the study's tasks"):
        load_study(path)


def test_every_study_file_passes_its_own_check():
    """What `recipes/study.py --check true` runs: every row of every committed study parses, with the pretraining
    recipe's cross-field rules (the +meta adpt rows once lacked their meta-validation split)."""
    recipe = load_study_recipe()
    for path in sorted(Path("recipes/configs/study").glob("*.yaml")):
        if not path.name.endswith("_pretrain.yaml"):  # pretraining bases (small_pretrain, small_7lang_pretrain)
            recipe.check_pretrain_rows(load_study(path))


def two_seed_study(tmp_path, extra: dict | None = None):
    """random_init and joint_pair × seeds 0, 1, 2 × POS sw within-language, with hand-made records."""
    tmp_path.mkdir(exist_ok=True)
    config = tmp_path / "pretrain.yaml"
    config.write_text("languages: [en, sw]\n")
    values = {"name": "h", "runs_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
              "models": [{"name": name, "config": str(config), "seeds": [0, 1, 2]} for name in ("random_init", "joint_pair")],
              "tasks": [{"task": "pos", "setting": "within", "train_language": "sw", "eval_languages": ["sw"]}],
              **(extra or {})}  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(values))
    return load_study(path)


def write_cells(study, scores: dict[str, list[float]], converged=lambda model, seed: True):
    from meta_xlm.study import record_path, write_record
    from meta_xlm.tasks.finetuning import convergence

    pretrain = {"kind": "pretrain", "steps": 50, "tokens_seen": {"en": 1, "sw": 1}, "perplexity": {"sw": 9.0},
                "wall_time_s": 1.0, "history": []}  # fmt: skip
    for model in study.models:
        for seed in model.seeds:
            write_record(record_path(study, "pretrain", model.name, seed), pretrain)
            curve = [50.0, 61.0, 60.0] if converged(model.name, seed) else [50.0, 55.0, 60.0]
            selection = {"batch_size": 16, "learning_rate": 1e-3, "dev_score": max(curve), **convergence(curve)}
            write_record(record_path(study, "finetune", model.name, seed, study.tasks[0]), {
                "kind": "finetune", "scores": {"sw": {"f1": scores[model.name][seed]}}, "selection": selection,
                "converged": selection["converged"],
                "dev_curves": [{"batch_size": 16, "learning_rate": 1e-3, "epochs": [
                    {"epoch": epoch, "dev_score": score} for epoch, score in enumerate(curve, 1)]}],
            })  # fmt: skip


def test_a_fine_tuning_cell_that_did_not_converge_is_marked_in_results_and_report(tmp_path):
    from meta_xlm.study_report import build_study_report, read_results_csv

    study = two_seed_study(tmp_path)
    write_cells(study, {"random_init": [60.0, 61.0, 62.0], "joint_pair": [70.0, 71.0, 72.0]},
                converged=lambda model, seed: (model, seed) != ("joint_pair", 1))  # fmt: skip
    report = build_study_report(study).read_text()
    flags = {(r["model"], r["seed"]): r["converged"] for r in read_results_csv(Path(study.results_dir) / "results.csv")
             if r["task"] == "pos"}  # fmt: skip
    assert flags[("joint_pair", 1)] == "no" and set(flags.values()) == {"yes", "no"}
    assert "5 of 6 fine-tuning cells converged" in report
    assert "| joint_pair | 1 | pos_within_sw | batch 16, lr 0.001 | 3 of 3 | +10.00 |" in report
    assert "| joint_pair | 71.0 ± 1.0 (n=3) (1 not converged) |" in report
    assert "| random_init | 61.0 ± 1.0 (n=3) |" in report


def test_the_report_sets_an_earlier_studys_numbers_and_verdicts_beside_its_own(tmp_path):
    from meta_xlm.study_report import build_study_report

    earlier = two_seed_study(tmp_path / "earlier")
    write_cells(earlier, {"random_init": [60.0, 61.0, 62.0], "joint_pair": [60.5, 61.5, 62.5]})
    build_study_report(earlier)
    study = two_seed_study(tmp_path, {"compare_with": earlier.results_dir})
    write_cells(study, {"random_init": [60.0, 61.0, 62.0], "joint_pair": [70.0, 71.0, 72.0]})
    report = build_study_report(study).read_text()
    assert "1 of the 1 verdicts both studies give changed." in report
    assert ("| pretraining helps at all | joint_pair sw vs random_init sw | pos within f1 | not reproduced (no "
            "difference beyond 2 spreads) | reproduced | yes |") in report
    assert "| pos within sw f1 | joint_pair | 61.5 ± 1.0 (n=3) | 71.0 ± 1.0 (n=3) | +9.5 |" in report


def test_a_kept_model_is_the_run_in_half_precision_and_loads_in_float32(tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForTokenClassification

    from meta_xlm import MetaXLMConfig, MetaXLMForMaskedLM
    from meta_xlm.study import keep_pretrained_model

    torch.manual_seed(0)
    config = MetaXLMConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, languages=["en", "sw"], language_modules="adapters")  # fmt: skip
    original = MetaXLMForMaskedLM(config)
    original.save_pretrained(tmp_path / "run")
    (tmp_path / "run" / "perplexity.json").write_text('{"sw": 9.0}')
    digest = keep_pretrained_model(tmp_path / "run", tmp_path / "kept")
    assert len(digest) == 64 and not (tmp_path / ".kept.tmp").exists()
    assert (tmp_path / "kept" / "perplexity.json").read_text() == '{"sw": 9.0}'
    with safe_open(tmp_path / "kept" / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(key).dtype for key in weights.keys()} == {torch.float16}
    kept = AutoModelForTokenClassification.from_pretrained(tmp_path / "kept", num_labels=3)
    encoder = {f"roberta.{k}": v for k, v in original.roberta.state_dict().items()}
    for key, value in kept.state_dict().items():
        if key in encoder:  # the encoder: the run's float32 weights rounded to float16, loaded back as float32
            assert value.dtype == torch.float32 and torch.equal(value, encoder[key].half().float()), key
    assert sum(key in encoder for key in kept.state_dict()) == len(encoder)


def test_a_kept_model_over_the_shard_size_is_split_loads_whole_and_keeps_again_to_the_same_bytes(tmp_path, monkeypatch):
    import hashlib

    import torch
    from transformers import AutoModelForMaskedLM

    from meta_xlm import MetaXLMConfig, MetaXLMForMaskedLM
    from meta_xlm import study as study_module

    torch.manual_seed(0)
    config = MetaXLMConfig(vocab_size=101, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=29, languages=["en", "sw", "te"], language_modules="adapters")  # fmt: skip
    MetaXLMForMaskedLM(config).save_pretrained(tmp_path / "run")
    single = study_module.keep_pretrained_model(tmp_path / "run", tmp_path / "whole")
    # one file: the digest is that file's, as in the records written before shards
    assert single == hashlib.sha256((tmp_path / "whole" / "model.safetensors").read_bytes()).hexdigest()

    monkeypatch.setattr(study_module, "KEPT_SHARD_BYTES", 8_000)
    digest = study_module.keep_pretrained_model(tmp_path / "run", tmp_path / "kept")
    shards = study_module.weight_files(tmp_path / "kept")
    assert len(shards) > 2 and not (tmp_path / "kept" / "model.safetensors").exists()
    largest_tensor = max(p.numel() * 2 for p in MetaXLMForMaskedLM(config).state_dict().values())
    assert all(path.stat().st_size <= max(8_000, largest_tensor) + 4_096 for path in shards)  # + the header
    # from_pretrained reads the shards through the index: the same model as the one-file copy
    whole = AutoModelForMaskedLM.from_pretrained(tmp_path / "whole").state_dict()
    split = AutoModelForMaskedLM.from_pretrained(tmp_path / "kept").state_dict()
    assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole)
    # a kept folder kept again (to re-split a model kept before shards): the same files, the same digest
    assert study_module.keep_pretrained_model(tmp_path / "kept", tmp_path / "again") == digest
    monkeypatch.setattr(study_module, "KEPT_SHARD_BYTES", 10**9)
    assert study_module.keep_pretrained_model(tmp_path / "kept", tmp_path / "joined") == single


def test_a_verdict_whose_cells_are_missing_has_not_changed():
    from meta_xlm.study_report import changed_verdicts

    key = {"claim": "c", "comparison": "a vs b", "measure": "pos within f1"}
    before = [{**key, "verdict": "reproduced"}]
    assert changed_verdicts([{**key, "verdict": "not yet run"}], before)[0]["changed"] == ""
    assert changed_verdicts([{**key, "verdict": "inconclusive"}], before)[0]["changed"] == "yes"
    assert changed_verdicts([{**key, "verdict": "inconclusive"}], [])[0] == {**key, "before": "–", "now": "inconclusive", "changed": ""}


def test_the_meta_rows_answer_the_open_meta_questions_and_only_where_the_study_has_both_rows(tmp_path):
    from meta_xlm.study_report import claims_in_study, gate_on_pretraining, meta_step_claims, paper_claims

    names = ["random_init", "joint_pair", "meta_adpt", "meta_adpt_lookahead_optimizer", "adapters_on_own_meta_text"]
    study = treatment_study(tmp_path, names, (("pos", "within"),))
    claims = claims_in_study(meta_step_claims("sw"), study)
    assert {claim.text for claim in claims} == {  # no θ-lookahead row, no zero-shot task: none of those claims
        "optimizer lookahead beats SGD lookahead (within)", "optimizer lookahead beats SGD lookahead (perplexity)",
        "+meta adpt beats adapters on their own meta text (within)",
        "+meta adpt beats adapters on their own meta text (perplexity)"}
    data = (rows("random_init", [10.0, 11.0, 12.0]) + rows("joint_pair", [60.0, 61.0, 62.0])
            + rows("meta_adpt", [70.0, 71.0, 72.0]) + rows("meta_adpt_lookahead_optimizer", [80.0, 81.0, 82.0])
            + rows("adapters_on_own_meta_text", [69.0, 71.0, 73.0]))  # fmt: skip
    gated = gate_on_pretraining([verdict(claim, data) for claim in claims_in_study(paper_claims("sw"), study) + claims])
    verdicts = {v["claim"]: v for v in gated}  # the report's gate: pretraining (joint_pair) beats random init
    assert verdicts["optimizer lookahead beats SGD lookahead (perplexity)"]["verdict"] == "not yet run"
    optimizer = verdicts["optimizer lookahead beats SGD lookahead (within)"]
    assert optimizer["comparison"] == "meta_adpt_lookahead_optimizer sw vs meta_adpt sw"
    assert optimizer["verdict"] == "reproduced"
    own_text = verdicts["+meta adpt beats adapters on their own meta text (within)"]
    assert own_text["verdict"].startswith("not reproduced (no difference")
