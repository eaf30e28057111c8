"""MetaXLMTrainer with gradient surgery / fixed loss weights: language-balanced steps, the update by hand, GA, resume,
bf16, DDP, bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from ddp_surgery_train import main as train_and_save
from meta_setup import LANGUAGES, blocks, deterministic_collator, make_trainer, snapshot, tiny_model

from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM, parameter_groups
from meta_xlm.surgery import cosines, gram_matrix, pcgrad_coefficients
from meta_xlm.sampling import LanguageBalancedBatchSampler
from meta_xlm.trainer import MetaXLMTrainingArguments

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def joint_pair_model() -> MetaXLMForMaskedLM:
    """The tiny model without language-specific modules (JointPair): θ only."""
    torch.manual_seed(0)
    config = MetaXLMConfig(**{**tiny_model().config.to_dict(), "language_modules": "none"})
    return MetaXLMForMaskedLM(config).to(torch.float64)


def surgery_trainer(output_dir, **args):
    return make_trainer(output_dir, meta_learning=False, **{"gradient_surgery": "pcgrad", **args})


def language_gradients(model, batch, num_items):
    """Per language: (θ gradient as one flat vector, φ_l gradients) of Σ_{rows of l} CE / num_items."""
    groups = parameter_groups(model)
    shared = list(groups.shared.values())
    result = {}
    for index, code in enumerate(LANGUAGES):
        rows = batch["lang_ids"] == index
        loss = model(**{k: v[rows] for k, v in batch.items()}, num_items_in_batch=num_items).loss
        grads = torch.autograd.grad(loss, shared + list(groups.languages[code].values()))
        result[code] = (torch.cat([g.reshape(-1) for g in grads[: len(shared)]]), grads[len(shared) :])
    return result


def test_one_step_by_hand_per_matrix_pcgrad_with_loss_weights(tmp_path):
    """θ ← θ − lr Σ_l g_l' (PCGrad per weight matrix on w_l g_l, the trainer's random order), φ_l ← φ_l − lr w_l ∇φ_l
    of language l's loss alone; the logged cosine is that of the languages' θ gradients."""
    weights = {"en": 1.0, "te": 2.0, "pt": 0.5}
    train = blocks({"en": 24, "te": 24, "pt": 24}, seed=1)
    trainer = surgery_trainer(tmp_path, train=train, language_loss_weights=weights, surgery_granularity="matrix",
                              max_steps=1, per_device_train_batch_size=8, optim="sgd", learning_rate=0.05)
    before = snapshot(trainer.model)
    trainer.train()

    block = next(iter(LanguageBalancedBatchSampler(train["lang_ids"], LANGUAGES, 8, 1, None, seed=7)))
    assert sorted(train[block]["lang_ids"]) == [0, 0, 0, 1, 1, 1, 2, 2]  # every language in the step
    batch = deterministic_collator([train[i] for i in block])
    reference = tiny_model()
    reference.load_state_dict(before, strict=False)
    grads = language_gradients(reference, batch, batch["labels"].ne(-100).sum())
    w = torch.tensor([weights[code] for code in LANGUAGES], dtype=torch.float64)
    theta = torch.stack([grads[code][0] for code in LANGUAGES])  # (L, n)
    shared = parameter_groups(reference).shared
    generator = torch.Generator().manual_seed(7 * 1_000_003 + 0)
    conflicts, projected_gram = 0, torch.zeros(3, 3, dtype=torch.float64)
    for (name, param), columns in zip(shared.items(), theta.split([p.numel() for p in shared.values()], dim=1)):
        conflicts += int((gram_matrix(columns) < 0).any())
        weighted = columns * w[:, None]  # w_l g_l, this matrix's part
        projected = pcgrad_coefficients(gram_matrix(weighted), generator) @ weighted  # the g_l' themselves
        projected_gram += projected @ projected.T
        expected = param.detach() - 0.05 * projected.sum(0).view_as(param)
        torch.testing.assert_close(trainer.model.get_parameter(name), expected, rtol=1e-9, atol=1e-12, msg=name)
    assert conflicts > 0  # the surgery did something
    for k, code in enumerate(LANGUAGES):
        for (name, param), grad in zip(parameter_groups(reference).languages[code].items(), grads[code][1]):
            expected = param.detach() - 0.05 * w[k] * grad
            torch.testing.assert_close(trainer.model.get_parameter(name), expected, rtol=1e-9, atol=1e-12, msg=name)
    logged = trainer.state.log_history[0]
    assert logged["surgery_cosine_before/en-te"] == round(float(cosines(gram_matrix(theta))[0, 1]), 4)
    after = cosines(projected_gram)
    assert logged["surgery_cosine_after/te-pt"] == round(float(after[1, 2]), 4)
    assert logged["surgery_cosine_after/en-te"] != logged["surgery_cosine_before/en-te"]


@pytest.mark.parametrize("method,base", [("pcgrad", "adapters"), ("gradvac", "none"), (None, "adapters")])
def test_gradient_accumulation_equals_the_doubled_batch(tmp_path, method, base):
    """GA=2 × 4 and GA=1 × 8 hold the same examples per step and must end equal (None: fixed loss weights)."""
    weights = {"en": 1.0, "te": 2.0, "pt": 0.5} if method is None else None
    finals = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        model = tiny_model() if base == "adapters" else joint_pair_model()
        trainer = surgery_trainer(tmp_path / f"ga{accumulation}", model=model, gradient_surgery=method,
                                  language_loss_weights=weights, max_steps=3,
                                  per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                                  max_grad_norm=1.0, surgery_granularity="layer", gradvac_ema=0.5)
        trainer.train()
        finals.append(snapshot(trainer.model))
    start = snapshot(tiny_model() if base == "adapters" else joint_pair_model())
    for name in finals[0]:
        torch.testing.assert_close(finals[1][name], finals[0][name], rtol=1e-5, atol=1e-7, msg=name)
    assert any(not torch.equal(finals[0][n], start[n]) for n in finals[0])


def test_resume_restores_gradvac_targets_and_reproduces_the_run(tmp_path):
    args = {"gradient_surgery": "gradvac", "gradvac_ema": 0.5, "max_steps": 4, "per_device_train_batch_size": 4,
            "save_strategy": "steps", "save_steps": 2}
    full = surgery_trainer(tmp_path / "full", **args)
    full.train()
    assert os.path.isfile(tmp_path / "full" / "checkpoint-2" / "surgery_state.pt")
    resumed = surgery_trainer(tmp_path / "full", model=tiny_model(seed=123), **args)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))

    def after_step_2(trainer):
        return [(e["step"], e["loss"], e["surgery_cosine_after/en-te"]) for e in trainer.state.log_history
                if "loss" in e and e["step"] > 2]

    assert len(after_step_2(full)) == 2 and after_step_2(resumed) == after_step_2(full)
    assert torch.equal(resumed.language_gradients.gradvac.targets, full.language_gradients.gradvac.targets)
    assert bool(full.language_gradients.gradvac.targets.ne(0).any())
    final_full, final_resumed = snapshot(full.model), snapshot(resumed.model)
    for name in final_full:
        assert torch.equal(final_full[name], final_resumed[name]), name
    os.remove(tmp_path / "full" / "checkpoint-2" / "surgery_state.pt")
    again = surgery_trainer(tmp_path / "full", **args)
    with pytest.raises(ValueError, match="surgery_state.pt is missing"):
        again.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))


def test_bf16_surgery_steps_move_every_language(tmp_path):
    trainer = surgery_trainer(tmp_path, gradient_surgery="gradvac", max_steps=2, per_device_train_batch_size=4,
                              bf16=True, max_grad_norm=1.0, model=tiny_model(torch.float32))
    before = snapshot(trainer.model)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    groups = parameter_groups(trainer.model)
    for code in LANGUAGES:  # every step holds every language: every φ_l moves
        assert all(not torch.equal(trainer.model.get_parameter(n), before[n]) for n in groups.languages[code])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_bad_inputs_raise_clear_errors(tmp_path):
    def arguments(**args):
        return MetaXLMTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **args)

    with pytest.raises(ValueError, match=r"gradient_surgery='foo' is not one of \('pcgrad', 'gradvac'\)"):
        arguments(gradient_surgery="foo")
    with pytest.raises(ValueError, match="surgery_granularity='block' is not one of"):
        arguments(gradient_surgery="pcgrad", surgery_granularity="block")
    with pytest.raises(ValueError, match="with meta_learning=True is not supported"):
        arguments(gradient_surgery="gradvac", meta_learning=True)
    with pytest.raises(ValueError, match="is not LANG=WEIGHT"):
        arguments(language_loss_weights=["en"])
    one_language = surgery_trainer(tmp_path, train=blocks({"en": 16}, seed=0), max_steps=1)
    with pytest.raises(ValueError, match=r"needs at least two languages .* got \['en'\]"):
        one_language.train()
    missing = surgery_trainer(tmp_path, language_loss_weights={"en": 1.0, "te": 2.0}, max_steps=1)
    with pytest.raises(ValueError, match="give one weight per language"):
        missing.train()


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, accelerate_launch):
    """2 CPU processes (per-device batch 4) vs 1 process (batch 8) over the same global batches, 3 GradVac steps per
    layer with clipping: ranks end bit-identical (surgery on the all-reduced gradients); vs one process within 1e-6
    relative (the all-reduce sums in another order)."""
    script = REPO / "tests" / "scripts" / "ddp_surgery_train.py"
    launch = accelerate_launch(2)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    subprocess.run([*launch, str(script), str(tmp_path / "ddp"), "4"], check=True, env=env, timeout=300)
    train_and_save(str(tmp_path / "single"), 8)  # in this process: one interpreter start fewer
    rank0 = torch.load(tmp_path / "ddp" / "params_rank0.pt")
    rank1 = torch.load(tmp_path / "ddp" / "params_rank1.pt")
    single = torch.load(tmp_path / "single" / "params_rank0.pt")
    start = snapshot(tiny_model())
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-6, atol=1e-8, msg=name)
    assert any(not torch.equal(rank0[n], start[n]) for n in start)
    assert bool(rank0["gradvac_targets"].ne(0).any())
