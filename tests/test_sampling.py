"""Language sampling (meta_xlm.sampling): the paper's p_i formula and the language batch samplers."""

import pytest

from meta_xlm.sampling import LanguageBalancedBatchSampler, LanguageBatchSampler, language_sampling_probabilities

LANGUAGES = ["en", "te", "pt"]


def test_sampling_probabilities_match_formula_and_sum_to_one():
    sizes = {"en": 1000, "sw": 10, "te": 90}
    probabilities = language_sampling_probabilities(sizes, temperature=2.0)
    total = sum(sizes.values())
    raw = {lang: (size / total) ** 0.5 for lang, size in sizes.items()}
    expected = {lang: value / sum(raw.values()) for lang, value in raw.items()}
    assert probabilities == pytest.approx(expected, rel=1e-12)
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert probabilities["sw"] > sizes["sw"] / total  # T > 1 upsamples the small language


def test_temperature_one_is_proportional_and_large_temperature_tends_to_uniform():
    sizes = {"en": 1000, "sw": 10, "te": 90}
    proportional = language_sampling_probabilities(sizes, temperature=1.0)
    assert proportional == pytest.approx({lang: size / 1100 for lang, size in sizes.items()})
    near_uniform = language_sampling_probabilities(sizes, temperature=1e4)
    assert near_uniform == pytest.approx({lang: 1 / 3 for lang in sizes}, abs=1e-3)
    with pytest.raises(ValueError, match="temperature"):
        language_sampling_probabilities(sizes, temperature=0)


def test_language_batch_sampler_gives_one_language_per_step_for_every_rank():
    lang_ids = [0] * 30 + [1] * 30 + [2] * 30
    sampler = LanguageBatchSampler(lang_ids, LANGUAGES, batch_size=3, batches_per_step=4, probabilities=None, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 90 // 12 * 4
    for step in range(0, len(batches), 4):
        languages = {lang_ids[i] for batch in batches[step : step + 4] for i in batch}
        assert len(languages) == 1
        assert sum(len(batch) for batch in batches[step : step + 4]) == 12
    assert list(sampler) == batches  # a function of (seed, epoch): resume reproduces it
    sampler.set_epoch(1)
    assert list(sampler) != batches
    only_te = LanguageBatchSampler(lang_ids, LANGUAGES, 3, 4, {"te": 1.0, "en": 0.0}, seed=1)
    assert all(lang_ids[i] == 1 for batch in only_te for i in batch)


def test_balanced_sampler_holds_every_language_in_proportion_and_ignores_the_cut():
    lang_ids = [0] * 40 + [1] * 40 + [2] * 40
    probabilities = {"en": 0.7, "te": 0.2, "pt": 0.1}
    steps = []
    for batch_size, batches_per_step in ((8, 2), (4, 4), (16, 1)):
        sampler = LanguageBalancedBatchSampler(lang_ids, LANGUAGES, batch_size, batches_per_step, probabilities, 3)
        batches = list(sampler)
        assert len(batches) == len(sampler) and all(len(b) == batch_size for b in batches)
        steps.append([sum(batches[s : s + batches_per_step], []) for s in range(0, len(batches), batches_per_step)])
    assert steps[0] == steps[1] == steps[2]  # the same global batches however they are cut
    for step in steps[0]:
        assert [sum(lang_ids[i] == k for i in step) for k in range(3)] == [10, 4, 2]  # 1 + p × 13, largest remainder
    with pytest.raises(ValueError, match="cannot hold one example of each of the 3 languages"):
        LanguageBalancedBatchSampler(lang_ids, LANGUAGES, 1, 2, None, 3)
