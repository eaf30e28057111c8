"""The seven-language study (issue 29): its study file, the text its pretraining reads, and claim 2's verdict."""

import math
import re
from pathlib import Path

import pytest
import yaml

import meta_xlm.data
from meta_xlm.cli import corpus_paths
from meta_xlm.study import load_study, pretrain_config, record_path, write_record

REPO_ROOT = Path(__file__).resolve().parents[1]
STUDY = REPO_ROOT / "recipes" / "configs" / "study" / "small_7lang.yaml"


def evaluation_derived_files(readme: Path) -> set[tuple[str, str]]:
    """(language, file name as stored, .gz) of every row of text/README.md's table whose caveat says the file
    comes from, or overlaps, an evaluation set."""
    found = set()
    for line in readme.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.search(r"eval sets?\b", cells[4]):
            found.add((cells[0], f"{cells[1]}.gz"))
    return found


def test_the_study_file_loads_and_every_row_uses_the_seven_language_base():
    study = load_study(STUDY)
    base = yaml.safe_load(Path(study.models[0].config).read_text(encoding="utf-8"))
    assert {Path(model.config).name for model in study.models} == {"small_7lang_pretrain.yaml"}
    assert base["languages"] == ["en", "fr", "ru", "ar", "hi", "sw", "te"]
    # one vocabulary size for every row: Mono, JointPair and All-7 differ only in their languages
    assert not any("vocab_size" in model.overrides for model in study.models)
    assert study.gradients["models"] == ["all_7"] and study.gradients["matrix"] is True


def test_pretraining_never_opens_a_file_derived_from_an_evaluation_set(shared_data, monkeypatch, tmp_path):
    """Every distinct pretraining text source of the study's rows (and its gradient analysis) is loaded as
    recipes/pretrain.py loads it; the files actually opened must include none that text/README.md marks."""
    forbidden = evaluation_derived_files(shared_data("text", "README.md"))
    assert {("ar", "ud_pud_TEST_text.txt.gz"), ("hi", "ud_pud_TEST_text.txt.gz")} <= forbidden
    study = load_study(STUDY)
    sources = {}
    for model in study.models:
        config = pretrain_config(model, model.seeds[0], tmp_path)
        sources[(tuple(config["languages"]), tuple(config.get("corpus_files", [])), config.get("text_dir"))] = model.name
    gradients = study.gradients
    sources[(tuple(gradients["languages"]), tuple(gradients["corpus_files"]), gradients.get("text_dir"))] = "gradients"
    opened = []
    original = meta_xlm.data._open_text
    monkeypatch.setattr(meta_xlm.data, "_open_text", lambda path: opened.append(Path(path)) or original(path))
    monkeypatch.chdir(REPO_ROOT)
    for (languages, files, text_dir), row in sources.items():
        opened.clear()
        meta_xlm.data.load_corpora(list(languages), corpus_paths(list(files)), text_dir, cache_dir=str(tmp_path / "cache"))
        read = {(path.parent.name, path.name) for path in opened}
        assert not read & forbidden, f"{row} reads evaluation-derived text {sorted(read & forbidden)}"
        assert {language for language, _ in read} == set(languages), f"{row}: a language has no text"


# ---------------------------------------------------------------------------------------------- claim 2
TASK_LANGUAGES = ("te", "sw", "hi", "fr")


def claim2_study(tmp_path, references: dict[str, str]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "pretrain.yaml"
    config.write_text("languages: [en, fr, hi, sw, te]\n")
    names = ["random_init", "all_7", *references.values()]
    values = {"name": "seven", "runs_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
              "models": [{"name": name, "config": str(config), "seeds": [0, 1, 2]} for name in names],
              "tasks": [{"task": "ner", "setting": "within", "train_language": language, "eval_languages": [language]}
                        for language in TASK_LANGUAGES],
              "gradients": {"models": ["all_7"], "languages": ["en", *TASK_LANGUAGES], "matrix": True}}  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(values))
    return load_study(path)


def write_claim2_records(study, cosines: dict[str, float], f1: dict[str, dict[str, float]]) -> None:
    """Three seeds per row (seed s adds s/10 to every score, so each side has a spread); All-7's gradient record
    has two checkpoints per seed whose mean en-X cosine is `cosines[X]`."""
    for model in study.models:
        for seed in model.seeds:
            write_record(record_path(study, "pretrain", model.name, seed),
                         {"kind": "pretrain", "steps": 10, "tokens_seen": {"te": 100}, "perplexity": {},
                          "wall_time_s": 1.0, "history": []})  # fmt: skip
            for task in study.tasks:
                language = task.train_language
                if language in f1.get(model.name, {}):
                    score = f1[model.name][language] + seed / 10
                    write_record(record_path(study, "finetune", model.name, seed, task),
                                 {"kind": "finetune", "scores": {language: {"f1": score}}})  # fmt: skip
    for seed in (0, 1, 2):
        rows = [{"step": step, "pair": f"en-{language}", "segment": "all", "cosine": cosine + offset}
                for language, cosine in cosines.items() for step, offset in ((500, -0.01), (1000, 0.01))]  # fmt: skip
        rows.append({"step": 500, "pair": "en-en", "segment": "all", "cosine": 0.4})
        write_record(record_path(study, "gradients", "all_7", seed), {"kind": "gradients", "rows": rows})


def claim2_table(tmp_path, cosines, drops):
    from meta_xlm.study_report import build_study_report, conflict_points, conflict_verdicts, result_rows

    references = {"te": "mono_te", "sw": "mono_sw", "hi": "mono_hi", "fr": "joint_pair_en_fr"}
    study = claim2_study(tmp_path, references)
    all_7 = {language: 50.0 for language in TASK_LANGUAGES}
    f1 = {"all_7": all_7, "random_init": {language: 10.0 for language in TASK_LANGUAGES}}
    f1.update({references[language]: {language: 50.0 + drop} for language, drop in drops.items()})
    write_claim2_records(study, cosines, f1)
    points = conflict_points(study, result_rows(study))
    return study, points, conflict_verdicts(points), build_study_report(study)


def test_claim2_more_conflict_with_larger_drops_is_shown_and_the_report_has_its_table_and_scatter(tmp_path):
    cosines = {"te": 0.05, "sw": 0.1, "hi": 0.2, "fr": 0.3}
    drops = {"te": 8.0, "sw": 6.0, "hi": 4.0, "fr": 1.0}
    study, points, verdicts, report = claim2_table(tmp_path, cosines, drops)
    by_language = {point["language"]: point for point in points}
    assert by_language["fr"]["reference"] == "joint_pair_en_fr" and by_language["te"]["reference"] == "mono_te"
    for language in TASK_LANGUAGES:
        assert by_language[language]["en-X cosine"] == pytest.approx(cosines[language])
        assert by_language[language]["drop"] == pytest.approx(drops[language], abs=0.05)
    # a perfect inverse ordering of 4 languages: rho -1, exact one-sided p = 1/4! = 0.042
    assert verdicts == [{"claim": "conflict predicts loss", "measure": "ner within f1", "points": 4,
                         "languages": "te sw hi fr", "rho": "-1.00", "p": "0.042",
                         "verdict": "yes: lower cosine, larger drop"}]  # fmt: skip
    text = report.read_text(encoding="utf-8")
    assert "## 2. Does gradient conflict predict the loss?" in text and "What so few points can and cannot show" in text
    results = Path(study.results_dir)
    assert (results / "conflict_vs_drop.png").stat().st_size > 0 and (results / "gradient_matrix.png").is_file()


def test_claim2_the_opposite_ordering_is_not_shown_and_two_languages_cannot_be_tested(tmp_path):
    cosines = {"te": 0.05, "sw": 0.1, "hi": 0.2, "fr": 0.3}
    _, _, verdicts, _ = claim2_table(tmp_path / "a", cosines, {"te": 1.0, "sw": 4.0, "hi": 6.0, "fr": 8.0})
    assert (verdicts[0]["rho"], verdicts[0]["verdict"]) == ("+1.00", "not shown")
    _, points, verdicts, _ = claim2_table(tmp_path / "b", {"te": 0.05, "sw": 0.1}, {"te": 8.0, "sw": 6.0})
    assert [p["language"] for p in points if p["en-X cosine"] is None] == ["hi", "fr"]  # no gradient rows
    assert verdicts[0]["points"] == 2 and verdicts[0]["verdict"].startswith("cannot be tested: 2 language(s)")



# ---------------------------------------------------------------------------------------------- claim 1, perplexity
def test_the_curse_on_perplexity_is_judged_per_character_because_each_row_has_its_own_tokenizer(tmp_path):
    """Mono-te's tokenizer packs 3 characters into a token where All-7's shared one packs 2: per token Mono-te's
    perplexity is the higher (each token holds more to predict), per character it is the lower."""
    from meta_xlm.study_report import curse_claims, result_rows, seven_language_verdicts

    config = tmp_path / "pretrain.yaml"
    config.write_text("languages: [en, te]\n")
    rows = {"random_init": (3000.0, 2.0), "mono_te": (200.0, 3.0), "all_7": (100.0, 2.0)}  # perplexity, chars/token
    values = {"name": "seven", "runs_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
              "models": [{"name": name, "config": str(config), "seeds": [0, 1, 2]} for name in rows],
              "tasks": []}  # fmt: skip
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(values))
    study = load_study(tmp_path / "study.yaml")
    for model in study.models:
        perplexity, ratio = rows[model.name]
        for seed in model.seeds:
            write_record(record_path(study, "pretrain", model.name, seed),
                         {"kind": "pretrain", "steps": 10, "tokens_seen": {"te": 100}, "wall_time_s": 1.0,
                          "perplexity": {"te": perplexity + seed}, "characters_per_token": {"te": ratio},
                          "history": []})  # fmt: skip
    verdicts = {entry["measure"]: entry for entry in seven_language_verdicts(study, result_rows(study), curse_claims)
                if entry["claim"] == "Mono ≥ All-7" and entry["language"] == "te"}  # fmt: skip
    assert verdicts["pretrain perplexity"]["verdict"] == "not reproduced (the opposite holds)"  # per token: 201 vs 101
    per_character = verdicts["pretrain bits_per_character"]  # log2(201) / 3 = 2.55 against log2(101) / 2 = 3.33
    assert per_character["verdict"] == "reproduced"
    assert per_character["better"].startswith("2.55") and per_character["worse"].startswith("3.33")


def test_fig2_draws_every_row_of_the_curse_in_perplexity_and_in_bits_per_character(tmp_path):
    import csv

    from meta_xlm.study_report import build_study_report

    config = tmp_path / "pretrain.yaml"
    config.write_text("languages: [en, te]\n")
    rows = {"mono_te": (200.0, 3.0), "joint_pair_en_te": (150.0, 2.5), "all_7": (100.0, 2.0)}
    values = {"name": "seven", "runs_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
              "models": [{"name": name, "config": str(config), "seeds": [0, 1]} for name in rows], "tasks": [],
              "figures": {"perplexity_languages": ["te"]}}  # fmt: skip
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(values))
    study = load_study(tmp_path / "study.yaml")
    for model in study.models:
        final, ratio = rows[model.name]
        for seed in model.seeds:  # seed s adds 2s to every point: the figure shows the seeds' mean
            history = [{"step": 10, "eval_te_perplexity": 2 * final + 2 * seed},
                       {"step": 20, "eval_te_perplexity": final + 2 * seed}]  # fmt: skip
            write_record(record_path(study, "pretrain", model.name, seed),
                         {"kind": "pretrain", "steps": 20, "tokens_seen": {"te": 100}, "wall_time_s": 1.0,
                          "perplexity": {"te": final + 2 * seed}, "characters_per_token": {"te": ratio},
                          "history": history})  # fmt: skip
    report = build_study_report(study).read_text(encoding="utf-8")
    assert "fig2_perplexity_te.png" in report and "fig2_bits_per_character_te.png" in report
    results = Path(study.results_dir)
    with (results / "fig2_bits_per_character_te.csv").open() as handle:
        bits = {(row["run"], int(row["step"])): float(row["bits per character"]) for row in csv.DictReader(handle)}
    for model, (final, ratio) in rows.items():
        expected = (math.log2(final) + math.log2(final + 2)) / 2 / ratio
        assert bits[(model, 20)] == pytest.approx(expected)
    with (results / "fig2_perplexity_te.csv").open() as handle:
        assert {row["run"] for row in csv.DictReader(handle)} == set(rows)


def test_claim4s_cost_is_cpu_time_per_timed_step_when_every_cell_has_it_else_wall_time(tmp_path):
    """A pause (wall time only) must not move the ratio; a record from before CPU time was recorded makes both
    rows fall back to wall time, so the two sides are always measured alike."""
    from meta_xlm.study_report import meta_objective_verdicts

    config = tmp_path / "pretrain.yaml"
    config.write_text("languages: [en, te]\n")
    names = ["random_init", "all_7", "all_7_meta_adpt_k2", "all_7_meta_adpt_all"]
    values = {"name": "seven", "runs_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
              "models": [{"name": name, "config": str(config), "seeds": [0, 1]} for name in names], "tasks": []}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(values))
    study = load_study(tmp_path / "study.yaml")
    # all seven: 2 CPU s per step; k = 2: 1 CPU s per step over the 500 steps its resumed run took, 900 s paused
    costs = {"all_7_meta_adpt_all": (2000.0, 2000.0, 1000), "all_7_meta_adpt_k2": (1400.0, 500.0, 500)}
    for name, (wall, cpu, timed) in costs.items():
        for seed in (0, 1):
            write_record(record_path(study, "pretrain", name, seed),
                         {"kind": "pretrain", "steps": 1000, "tokens_seen": {}, "perplexity": {"te": 9.0},
                          "wall_time_s": wall, "cpu_time_s": cpu, "timed_steps": timed, "history": []})  # fmt: skip
    _, cost = meta_objective_verdicts(study, [])
    assert "2.00 s per step with all seven, 1.00 s with k = 2: ratio 2.00 (CPU time" in cost
    path = record_path(study, "pretrain", "all_7_meta_adpt_k2", 1)
    record = yaml.safe_load(path.read_text())
    write_record(path, {key: value for key, value in record.items() if key not in ("cpu_time_s", "timed_steps")})
    _, cost = meta_objective_verdicts(study, [])
    assert "2.00 s per step with all seven, 1.40 s with k = 2: ratio 1.43 (wall time" in cost
