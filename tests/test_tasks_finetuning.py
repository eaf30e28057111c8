"""The Appendix A protocol pieces of meta_xlm.tasks.finetuning (the training loop itself runs in
tests/recipes/test_finetune.py)."""

import dataclasses

import pytest
import yaml
from conftest import REPO_ROOT, shared_data_path
from transformers import TrainingArguments

from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.tasks.finetuning import (
    FinetuneArguments,
    check_arguments,
    evaluation_languages,
    hyperparameter_grid,
    label_list,
    load_examples,
    load_task_data,
    mean_scores,
)
from meta_xlm.tasks.loaders import PANX_TAGS, DataReport, load_token_tag_file


def arguments(**overrides):
    return FinetuneArguments(**{"task": "ner", "model_name_or_path": "unused", **overrides})


def test_paper_grids():
    grid = hyperparameter_grid(arguments(task="pos"))
    assert [(g.batch_size, g.learning_rate) for g in grid] == [
        (16, 2e-5),
        (16, 3e-5),
        (16, 5e-5),
        (32, 2e-5),
        (32, 3e-5),
        (32, 5e-5),
    ]
    nli = hyperparameter_grid(arguments(task="nli"))
    assert len(nli) == 2 * 3 * 3
    assert {g.batch_size for g in nli} == {4, 8} and {g.learning_rate for g in nli} == {1e-6, 5e-6, 2e-5}
    assert {g.classifier_learning_rate for g in nli} == {5e-6, 2e-5, 5e-5}
    assert len(hyperparameter_grid(arguments(task="qa", max_grid_points=2))) == 2


def test_argument_checks():
    with pytest.raises(ValueError, match="XNLI has English training data only"):
        check_arguments(arguments(task="nli", setting="within"))
    with pytest.raises(ValueError, match="--setting must be one of"):
        check_arguments(arguments(setting="few_shot"))
    with pytest.raises(ValueError, match="classifier_learning_rates is an XNLI hyperparameter"):
        hyperparameter_grid(arguments(classifier_learning_rates=[1e-5]))


def test_default_evaluation_languages():
    assert evaluation_languages(arguments(setting="within", train_language="te")) == ["te"]
    assert evaluation_languages(arguments(task="qa")) == ["ar", "ru", "sw", "te"]
    assert evaluation_languages(arguments(task="pos")) == ["ar", "fr", "ru", "hi", "te"]


def test_label_sets(shared_data):
    panx = load_token_tag_file(shared_data("ner", "panx_xtreme", "dev-sw.tsv.gz"), "sw", "iob2")
    assert label_list(arguments(), panx) == PANX_TAGS
    masakha = load_token_tag_file(shared_data("ner", "masakhaner2_swa", "dev.txt.gz"), "sw", "iob2")
    assert "B-DATE" in label_list(arguments(), masakha)


def test_language_the_model_lacks_is_an_error_unless_a_fallback_is_named():
    config = MetaXLMConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        languages=["en", "te"],
    )

    class CharTokenizer:  # never reached: the language check comes first
        pass

    args = arguments(data_dir=str(shared_data_path()), max_eval_examples=2)
    with pytest.raises(ValueError, match="no modules for language 'sw'"):
        load_task_data(args, "sw", "test", CharTokenizer(), PANX_TAGS, config)


def test_mean_scores_leave_out_english_unless_alone():
    assert mean_scores({"en": {"f1": 90.0}, "te": {"f1": 40.0}, "sw": {"f1": 60.0}}) == {"f1": 50.0}
    assert mean_scores({"en": {"f1": 90.0}}) == {"f1": 90.0}


def test_other_bio_corpora_through_file_arguments(shared_data):
    folder = shared_data("ner", "il_ner", "Telugu")
    args = arguments(
        setting="within", train_language="te", train_file=str(folder / "train.txt.gz"),
        test_files=[f"te={folder / 'test.txt.gz'}"], map_malformed_to_o=True,
    )  # fmt: skip
    report = DataReport()
    train, source = load_examples(args, "te", "train", report)
    assert source.endswith("Telugu/train.txt.gz") and len(train) == 2993
    assert report.counts["malformed_tags_mapped_to_O"] == 1073
    assert label_list(args, train)[:3] == ["O", "B-NEAR", "B-NEL"]
    assert evaluation_languages(args) == ["te"]
    test, _ = load_examples(args, "te", "test", DataReport())
    assert len(test) == 384
    with pytest.raises(ValueError, match="--test_files entry 'te' is not LANG=PATH"):
        load_examples(arguments(test_files=["te"]), "te", "test", DataReport())


@pytest.mark.parametrize(
    "config", sorted((REPO_ROOT / "recipes" / "configs" / "finetune").glob("*.yaml")), ids=str
)
def test_finetune_configs_use_known_fields_and_say_how_to_run(config):
    text = config.read_text(encoding="utf-8")
    assert text.startswith("#") and "recipes/finetune.py --config" in text
    finetune_fields = {f.name for f in dataclasses.fields(FinetuneArguments)}
    training_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    values = yaml.safe_load(text)
    assert set(values) <= finetune_fields | training_fields, set(values) - finetune_fields - training_fields
    own = {key: value for key, value in values.items() if key in finetune_fields}
    check_arguments(FinetuneArguments(**{**own, "model_name_or_path": "checkpoint"}))


def test_convergence_peaked_flattened_or_still_rising():
    from meta_xlm.tasks.finetuning import convergence

    peaked = convergence([40.0, 62.0, 55.0, 58.0])  # best epoch 2 of 4: the dev score peaked
    assert peaked == {"best_epoch": 2, "epochs": 4, "gain_last_two_epochs": -4.0, "converged": True}
    flattened = convergence([40.0, 60.0, 60.2, 60.4])  # best is the last, but +0.4 over the last two epochs
    assert flattened["best_epoch"] == 4 and flattened["converged"]
    rising = convergence([40.0, 50.0, 55.0, 60.0])  # +10 over the last two epochs, best the last: more would help
    assert rising["gain_last_two_epochs"] == 10.0 and not rising["converged"]
    assert convergence([30.0, 31.0, 31.0])["best_epoch"] == 2  # the first of equal scores, as the Trainer keeps it
    assert not convergence([30.0, 40.0])["converged"]  # two epochs, still rising: no evidence of a plateau
    with pytest.raises(ValueError, match="at least one epoch"):
        convergence([])
