"""Verdicts of a study's claims from results rows (meta_xlm.study_report), and the study file's checks."""

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
    from meta_xlm.study import is_complete, pretrain_config, pretrain_folder, write_marker

    config = tmp_path / "pretrain.yaml"
    config.write_text("languages: [en]\nlearning_rate: 0.001\n")
    study_values = {"name": "s", "runs_dir": str(tmp_path / "runs"), "results_dir": "o",
                    "models": [{"name": "a", "config": str(config), "seeds": [0]}], "tasks": []}  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_values))
    study = load_study(path)
    model = study.models[0]
    folder = pretrain_folder(study, "a", 0)
    assert not is_complete(study, "pretrain", model, 0, None)
    folder.mkdir(parents=True)
    write_marker(folder, {"kind": "pretrain", "config": pretrain_config(model, 0, folder)})
    assert is_complete(study, "pretrain", model, 0, None)
    config.write_text("languages: [en]\nlearning_rate: 0.0005\n")
    with pytest.raises(ValueError, match=r"another configuration \(fields \['learning_rate'\] differ"):
        is_complete(study, "pretrain", model, 0, None)


def test_downstream_verdicts_wait_for_pretraining_to_beat_random_init():
    from meta_xlm.study_report import gate_on_pretraining

    def entry(claim, task, outcome):
        return {"claim": claim, "measure": f"{task} within f1", "verdict": outcome}

    verdicts = [entry("pretraining helps at all", "pos", "inconclusive"), entry("Mono > JointPair", "pos", "reproduced"),
                entry("pretraining helps at all", "ner", "reproduced"), entry("Mono > JointPair", "ner", "reproduced"),
                entry("Mono lower", "pretrain", "reproduced")]  # fmt: skip
    gated = [v["verdict"] for v in gate_on_pretraining(verdicts)]
    assert gated == ["inconclusive", "inconclusive: pretraining does not beat random init on pos (would be: reproduced)",
                     "reproduced", "reproduced", "reproduced"]  # fmt: skip
