"""Gradient conflict (paper Section 3.1, Fig. 3): cosine of shared-parameter gradients between languages."""

import csv
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments

from meta_xlm.analysis.gradient_conflict import (
    GradientConflictCallback,
    accumulated_gradient,
    measure_gradient_conflict,
    preserved_rng_state,
    segment_cosines,
    shared_gradient_index,
)
from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM, parameter_groups

LANGUAGES = ["en", "sw"]
BATCH, LENGTH, VOCAB, MASK_ID = 13, 7, 99, 98


def tiny_model(**overrides) -> MetaXLMForMaskedLM:
    config = MetaXLMConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        languages=LANGUAGES,
        language_modules="adapters",
        adapter_reduction_factor=4,
        **overrides,
    )
    return MetaXLMForMaskedLM(config)


def mlm_batch(language: str, seed: int, batch: int = BATCH) -> dict[str, torch.Tensor]:
    """Tokens drawn from a language-specific half of the vocabulary, 30% of positions masked."""
    generator = torch.Generator().manual_seed(seed)
    low = 4 if language == "en" else 50
    input_ids = torch.randint(low, low + 44, (batch, LENGTH), generator=generator)
    selected = torch.rand(batch, LENGTH, generator=generator) < 0.3
    selected[:, 0] = True
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    return {
        "input_ids": torch.where(selected, torch.full_like(input_ids, MASK_ID), input_ids),
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "lang_ids": torch.full((batch,), LANGUAGES.index(language)),
    }


def test_gradient_of_a_batch_with_itself_has_cosine_one():
    model = tiny_model()
    model.eval()  # dropout would make two passes over the same batch differ
    gradient_index = shared_gradient_index(model)
    batch = mlm_batch("en", 0)
    first, _ = accumulated_gradient(model, gradient_index, iter([batch]), BATCH)
    second, _ = accumulated_gradient(model, gradient_index, iter([batch]), BATCH)
    cosines = segment_cosines(first, second, gradient_index)
    assert {"all", "embeddings", "layer.0", "layer.1.attention", "layer.1.ffn"} <= set(cosines)
    for segment, value in cosines.items():
        assert value == pytest.approx(1.0, abs=1e-6), segment


def hand_gradient(model, batch, names) -> torch.Tensor:
    params = [dict(model.named_parameters())[name] for name in names]
    grads = torch.autograd.grad(model(**batch).loss, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


def test_two_languages_match_hand_computation_from_autograd():
    model = tiny_model()
    model.eval()
    shared = list(parameter_groups(model).shared)
    en, en_again, sw = mlm_batch("en", 1), mlm_batch("en", 3), mlm_batch("sw", 2)
    results = measure_gradient_conflict(
        model, {"en": iter([en, en_again]), "sw": iter([sw])}, target_sentences=BATCH
    )
    assert set(results) == {"en-sw", "en-en"}

    g_en, g_sw, g_en_again = (hand_gradient(model, batch, shared) for batch in (en, sw, en_again))
    assert -1 <= results["en-sw"]["all"] <= 1
    assert results["en-sw"]["all"] == pytest.approx(F.cosine_similarity(g_en, g_sw, dim=0).item(), abs=1e-5)
    assert results["en-en"]["all"] == pytest.approx(
        F.cosine_similarity(g_en, g_en_again, dim=0).item(), abs=1e-5
    )
    # One sublayer by hand: the attention block of layer 1 (language adapters are not shared: excluded).
    attention = [name for name in shared if name.startswith("roberta.encoder.layer.1.attention.")]
    assert not any("adapter_modules" in name for name in shared)
    g_en_att, g_sw_att = hand_gradient(model, en, attention), hand_gradient(model, sw, attention)
    expected = F.cosine_similarity(g_en_att, g_sw_att, dim=0).item()
    assert results["en-sw"]["layer.1.attention"] == pytest.approx(expected, abs=1e-5)
    for segments in results.values():
        assert all(-1 - 1e-9 <= value <= 1 + 1e-9 for value in segments.values())


def test_accumulation_weights_micro_batches_by_sentences():
    """Accumulating two micro-batches of 13 = the gradient of their 26-sentence mean-of-means."""
    model = tiny_model()
    model.eval()
    gradient_index = shared_gradient_index(model)
    a, b = mlm_batch("en", 4), mlm_batch("en", 5)
    accumulated, sentences = accumulated_gradient(model, gradient_index, iter([a, b]), 2 * BATCH)
    assert sentences == 2 * BATCH
    names = gradient_index.names
    expected = (hand_gradient(model, a, names) + hand_gradient(model, b, names)) / 2
    torch.testing.assert_close(accumulated, expected, atol=1e-6, rtol=1e-5)


def test_running_out_of_batches_is_a_clear_error():
    model = tiny_model()
    gradient_index = shared_gradient_index(model)
    with pytest.raises(ValueError, match="ran out after 13 sentences; target_sentences=4096"):
        accumulated_gradient(model, gradient_index, iter([mlm_batch("en", 0)]), 4096)


def test_measurement_leaves_rng_grad_and_mode_untouched():
    model = tiny_model(hidden_dropout_prob=0.3)
    model.train()
    for param in model.parameters():
        param.grad = torch.full_like(param, 7.0)
    torch.manual_seed(11), random.seed(11), np.random.seed(11)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(11), random.seed(11), np.random.seed(11)
    batches = {"en": iter([mlm_batch("en", 0), mlm_batch("en", 1)]), "sw": iter([mlm_batch("sw", 0)])}
    measure_gradient_conflict(model, batches, target_sentences=BATCH, seed=5)
    assert torch.equal(torch.rand(3), expected[0])
    assert (random.random(), np.random.rand()) == expected[1:]
    assert model.training
    assert all(torch.equal(param.grad, torch.full_like(param, 7.0)) for param in model.parameters())


def test_preserved_rng_state_restores_after_an_exception():
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    with pytest.raises(RuntimeError), preserved_rng_state():
        torch.rand(100)
        raise RuntimeError("probe failed")
    assert torch.equal(torch.rand(2), expected)


# ---------------------------------------------------------------------------------------------- Trainer
def random_masking_collator(examples):
    """Masks 30% of tokens with torch's global RNG, as MLMCollator does: the callback must not shift it."""
    input_ids = torch.tensor([example["input_ids"] for example in examples])
    selected = torch.rand(input_ids.shape) < 0.3
    selected[:, 1] = True
    return {
        "input_ids": torch.where(selected, torch.full_like(input_ids, MASK_ID), input_ids),
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.where(selected, input_ids, torch.full_like(input_ids, -100)),
        "lang_ids": torch.tensor([example["lang_ids"] for example in examples]),
    }


def block_dataset(seed: int, rows: int = 40) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    lang_ids = torch.randint(0, 2, (rows,), generator=generator)
    input_ids = torch.randint(4, 98, (rows, LENGTH), generator=generator)
    return Dataset.from_dict({"input_ids": input_ids.tolist(), "lang_ids": lang_ids.tolist()})


def train_losses(tmp_path, callback: GradientConflictCallback | None) -> list[float]:
    torch.manual_seed(0)
    model = tiny_model(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        max_steps=6,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=block_dataset(0),
        data_collator=random_masking_collator,
        callbacks=[callback] if callback else None,
    )
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_callback_leaves_training_losses_bit_identical(tmp_path):
    probe_data = {
        language: DataLoader(
            block_dataset(seed).filter(lambda row, lid=lid: row["lang_ids"] == lid),
            batch_size=5,
            shuffle=True,
            collate_fn=random_masking_collator,
        )
        for seed, (lid, language) in enumerate(zip((0, 1), LANGUAGES), start=1)
    }
    callback = GradientConflictCallback(
        probe_data, every_n_steps=2, target_sentences=8, output_dir=tmp_path / "conflict", tensorboard=True
    )
    with_probe = train_losses(tmp_path / "with", callback)
    without_probe = train_losses(tmp_path / "without", None)
    assert len(with_probe) == 6
    assert with_probe == without_probe  # exact float equality: bit-identical trajectories

    with (tmp_path / "conflict" / "gradient_conflict.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({int(row["step"]) for row in rows}) == [2, 4, 6]
    assert {row["pair"] for row in rows} == {"en-sw", "en-en"}
    assert all(-1 <= float(row["cosine"]) <= 1 for row in rows)
    assert list((tmp_path / "conflict" / "tensorboard").glob("events.out.tfevents.*"))


def _measure_on_rank(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One process of the two-process check: rank r measures the r-th of each language's two batches."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        torch.manual_seed(0)
        model = tiny_model().eval()
        batches = {language: iter([mlm_batch(language, 10 * rank + k)]) for k, language in enumerate(LANGUAGES)}
        batches["en"] = iter([mlm_batch("en", 10 * rank), mlm_batch("en", 100 + 10 * rank)])
        results = measure_gradient_conflict(model, batches, target_sentences=BATCH, seed=3)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_measure_the_same_cosines_as_one_over_all_their_batches(tmp_path):
    """Under DDP each process accumulates its own batches and the gradients are averaged: 2 processes with
    one batch each (per language) must give the cosines of 1 process over both batches (float32 sums in
    another order: 1e-5)."""
    from conftest import free_port

    torch.multiprocessing.spawn(_measure_on_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]

    torch.manual_seed(0)
    model = tiny_model().eval()
    both = {
        language: iter([mlm_batch(language, 10 * rank + k) for rank in range(2)])
        for k, language in enumerate(LANGUAGES)
    }
    both["en"] = iter([mlm_batch("en", 10 * rank) for rank in range(2)]
                      + [mlm_batch("en", 100 + 10 * rank) for rank in range(2)])
    single = measure_gradient_conflict(model, both, target_sentences=2 * BATCH, seed=3)

    assert ranks[0] == ranks[1]
    assert set(single) == set(ranks[0]) == {"en-sw", "en-en"}
    for pair, segments in single.items():
        for segment, cosine in segments.items():
            assert ranks[0][pair][segment] == pytest.approx(cosine, abs=1e-5), (pair, segment)
    # and differ from what rank 0's batches alone give: the processes did combine their gradients
    alone = {language: iter([mlm_batch(language, k)]) for k, language in enumerate(LANGUAGES)}
    alone["en"] = iter([mlm_batch("en", 0), mlm_batch("en", 100)])
    rank0_alone = measure_gradient_conflict(model, alone, target_sentences=BATCH, seed=3)
    assert abs(rank0_alone["en-sw"]["all"] - single["en-sw"]["all"]) > 1e-3


# ---------------------------------------------------------------------------------------------- the n × n matrix
def test_conflict_matrix_is_symmetric_with_ones_where_a_language_meets_itself_on_the_same_batch():
    """Three "languages" on a tiny model: en, sw, and en again under another name on the very same batches.
    Diagonal: each gradient with itself; en vs en-again: the same batch, so 1 too; the other entries agree with
    the pairwise measurement and en#2 (a second, independent en batch) is the En-En baseline."""
    from meta_xlm.analysis.gradient_conflict import cosine_matrices, language_gradients, pair_cosines, replicate_of

    model = tiny_model()
    gradient_index = shared_gradient_index(model)
    en, sw, en_second = mlm_batch("en", 1), mlm_batch("sw", 2), mlm_batch("en", 3)
    batches = {"en": iter([en, en_second]), "sw": iter([sw]), "en_again": iter([en])}
    gradients = language_gradients(model, batches, BATCH, "en", seed=0, gradient_index=gradient_index)
    names = list(gradients)
    assert names == ["en", "sw", "en_again", replicate_of("en")]
    matrices = cosine_matrices(gradients, gradient_index)
    assert {"all", "layer.0", "layer.1"} <= set(matrices)
    for segment, matrix in matrices.items():
        assert matrix.shape == (4, 4)
        np.testing.assert_allclose(matrix, matrix.T, atol=1e-12, err_msg=segment)
        np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-9, err_msg=segment)
        assert matrix[0, 2] == pytest.approx(1.0, abs=1e-6), segment  # en vs en on the same batch
    pairs = pair_cosines(gradients, gradient_index)
    assert matrices["all"][0, 1] == pytest.approx(pairs["en-sw"]["all"], abs=1e-9)
    assert matrices["layer.1"][0, 3] == pytest.approx(pairs["en-en"]["layer.1"], abs=1e-9)
    assert matrices["all"][0, 3] < 1 - 1e-3  # an independent batch is not the same batch


def test_matrix_rows_and_heatmap(tmp_path):
    from meta_xlm.analysis.gradient_conflict import matrix_rows
    from meta_xlm.analysis.plots import mean_matrix, plot_conflict_matrix

    names = ["en", "sw", "en#2"]
    first = np.array([[1.0, 0.2, 0.5], [0.2, 1.0, 0.1], [0.5, 0.1, 1.0]])
    rows = matrix_rows(500, names, {"all": first}) + matrix_rows(1000, names, {"all": first - 0.1 + 0.1 * np.eye(3)})
    assert len(rows) == 18 and rows[1] == {"step": 500, "segment": "all", "language_a": "en", "language_b": "sw",
                                           "cosine": 0.2}  # fmt: skip
    assert mean_matrix(rows, "all")[("en", "en#2")] == pytest.approx(0.45)  # the mean over checkpoints
    path = plot_conflict_matrix(rows, ["en", "sw"], "en", tmp_path / "matrix.png", ["all"])
    assert path.stat().st_size > 0
