"""The meta step as an engine (issue 28): θ's gradient from the lookahead, refusals of engines it cannot run
under, the same dropout masks in every pass, φ outside DDP's reducer."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from meta_setup import blocks, make_trainer, snapshot, tiny_model
from test_meta import flat, mlm_batch, val_batches

from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.hypergradients import METHODS, canonical_name
from meta_xlm.meta import meta_step_gradients
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM, parameter_groups
from meta_xlm.passes import same_masks
from meta_xlm.trainer import MetaXLMTrainingArguments

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")



# ---------------------------------------------------------------------------------------------- names
def test_old_method_names_are_aliases_of_the_new_ones():
    assert canonical_name("exact") == "double_backward" and canonical_name("finite_difference") == "central_difference"
    model, train, vals = tiny_model(), mlm_batch("te"), val_batches()
    for old, new in (("exact", "double_backward"), ("finite_difference", "central_difference")):
        got = [meta_step_gradients(model, [train], vals, "te", lookahead_lr=0.5, method=m, seeds=[0]).hypergradient
               for m in (old, new)]
        assert torch.equal(flat(got[0]), flat(got[1]))


# ---------------------------------------------------------------------------------------------- θ from the lookahead
def test_lookahead_theta_gradient_is_one_optimizer_step_on_the_lookahead_gradient(tmp_path):
    """theta_gradient="lookahead": θ ← θ − lr ∇_θ L_train^i(θ, φ^t) (the lookahead's own gradient, φ_te before its
    update) and φ_te ← φ_te − α ∇_{φ_te} M, by hand with SGD."""
    train = blocks({"te": 8}, seed=3)
    trainer = make_trainer(tmp_path, train=train, max_steps=1, per_device_train_batch_size=4, optim="sgd",
                           learning_rate=0.05, meta_learning_rate=0.3, theta_gradient="lookahead")
    reference = tiny_model()
    reference.load_state_dict(trainer.model.state_dict())
    before = snapshot(trainer.model)
    first_batch = next(iter(trainer.get_train_dataloader()))
    val = trainer.meta_validation.batches(0)
    trainer.train()
    step = meta_step_gradients(reference, [first_batch], val, "te", lookahead_lr=0.05,
                               method=trainer.args.hypergradient, keep_theta_gradient=True)
    groups = parameter_groups(reference)
    by_hand = torch.autograd.grad(reference(**first_batch).loss, list(groups.shared.values()))  # at (θ, φ^t)
    for (name, grad), hand in zip(step.theta_gradient.items(), by_hand):
        torch.testing.assert_close(grad, hand, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(trainer.model.get_parameter(name), before[name] - 0.05 * hand,
                                   rtol=1e-9, atol=1e-12, msg=name)
    for name, hyper in step.hypergradient.items():
        torch.testing.assert_close(trainer.model.get_parameter(name), before[name] - 0.3 * hyper,
                                   rtol=1e-9, atol=1e-12, msg=name)
    for code in ("en", "pt"):
        assert all(torch.equal(trainer.model.get_parameter(n), before[n]) for n in groups.languages[code])
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged[0] == pytest.approx(float(reference(**first_batch).loss.detach()), abs=1e-4)


def test_lookahead_theta_gradient_differs_from_recompute(tmp_path):
    """The two settings step θ differently (φ^t vs φ^{t+1}), which shows that the option is live."""
    finals = []
    for mode in ("lookahead", "recompute"):
        trainer = make_trainer(tmp_path / mode, max_steps=2, per_device_train_batch_size=4, theta_gradient=mode,
                               learning_rate=0.05, meta_learning_rate=0.3, optim="sgd")
        trainer.train()
        finals.append(snapshot(trainer.model))
    shared = parameter_groups(tiny_model()).shared
    assert any(not torch.allclose(finals[0][n], finals[1][n], rtol=1e-9, atol=1e-12) for n in shared)


def test_lookahead_theta_gradient_accumulation_equals_the_doubled_batch(tmp_path):
    finals = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        trainer = make_trainer(tmp_path / f"ga{accumulation}", max_steps=3, per_device_train_batch_size=batch_size,
                               gradient_accumulation_steps=accumulation, max_grad_norm=1.0,
                               theta_gradient="lookahead")
        trainer.train()
        finals.append(snapshot(trainer.model))
    for name in finals[0]:
        torch.testing.assert_close(finals[1][name], finals[0][name], rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------------------------- refusals
def arguments(tmp_path, **args):
    return MetaXLMTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **args)


DEEPSPEED_WITH_OPTIMIZER = {
    "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
    "zero_optimization": {"stage": 2},
    "train_micro_batch_size_per_gpu": "auto",
}


@pytest.mark.parametrize("setting,expected", [
    ({"meta_learning": True}, "meta_learning=True"),
    ({"gradient_surgery": "pcgrad"}, "gradient_surgery='pcgrad'"),
    ({"language_loss_weights": ["en=1", "te=2"]}, "language_loss_weights"),
])
def test_deepspeed_and_fsdp_are_refused_at_construction(tmp_path, setting, expected):
    with pytest.raises(ValueError, match=rf"{expected} is not supported with DeepSpeed \(deepspeed=.*optimizer"):
        arguments(tmp_path, deepspeed=DEEPSPEED_WITH_OPTIMIZER, **setting)
    with pytest.raises(ValueError, match=rf"{expected} is not supported with FSDP \(fsdp='full_shard'\)"):
        arguments(tmp_path, fsdp="full_shard", **setting)


def test_torch_compile_is_refused_for_methods_that_differentiate_twice(tmp_path):
    for method in ("exact", "double_backward", "forward_over_reverse"):
        with pytest.raises(ValueError, match=rf"hypergradient='{method}' and torch_compile=True is not supported"):
            arguments(tmp_path, meta_learning=True, torch_compile=True, hypergradient=method)
    for method in ("central_difference", "forward_difference", "first_order"):  # first derivatives only
        assert arguments(tmp_path, meta_learning=True, torch_compile=True, hypergradient=method).torch_compile
    with pytest.raises(ValueError, match=r"theta_gradient='both' is not one of \('recompute', 'lookahead'\)"):
        arguments(tmp_path, meta_learning=True, theta_gradient="both")


# ---------------------------------------------------------------------------------------------- dropout masks
def dropout_model() -> MetaXLMForMaskedLM:
    torch.manual_seed(0)
    config = MetaXLMConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, languages=["en", "te", "pt"],
        language_modules="adapters",
    )
    model = MetaXLMForMaskedLM(config).to(torch.float64).train()
    with torch.no_grad():
        for params in parameter_groups(model).languages.values():
            for p in params.values():
                p.normal_(0.0, 0.05)
    return model


def unrolled_with_masks(model, train, vals, language, lookahead_lr, seed, val_seeds):
    """d/dφ_i of M(θ − β ∇_θ L_train(θ, φ_i), φ) through the whole unrolled graph (double backward), every pass
    under the masks the meta step's passes use: independent of meta.py's flow."""
    groups = parameter_groups(model)
    phi = groups.languages[language]
    with same_masks(model, seed, train["input_ids"].device, math_kernel=True):
        grads = torch.autograd.grad(model(**train).loss, list(groups.shared.values()), create_graph=True)
    theta_prime = {n: p - lookahead_lr * g for (n, p), g in zip(groups.shared.items(), grads)}
    meta = 0.0
    for code, batch in vals.items():
        with same_masks(model, val_seeds[code], batch["input_ids"].device):
            meta = meta + functional_call(model, theta_prime, args=(), kwargs=batch, strict=False).loss / len(vals)
    return flat(dict(zip(phi, torch.autograd.grad(meta, list(phi.values())))))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "first_order"])
def test_every_method_sees_the_same_dropout_masks(method):
    """Dropout 0.1 (hidden and attention): each method's hypergradient against the exact double backward through
    the unrolled graph on the same masks, cosine ≥ 0.999 (float64). Finite differences at fd_epsilon 1e-3, where
    their truncation error is ~1e-5 (central) / ~4e-3 (one-sided) on this model."""
    model, train, vals = dropout_model(), mlm_batch("te"), val_batches()
    val_seeds = {code: 50 + k for k, code in enumerate(vals)}
    step = meta_step_gradients(model, [train], vals, "te", lookahead_lr=0.5, method=method, fd_epsilon=1e-3,
                               seeds=[11], val_seeds=val_seeds)
    reference = unrolled_with_masks(model, train, vals, "te", 0.5, 11, val_seeds)
    cosine = torch.nn.functional.cosine_similarity(flat(step.hypergradient), reference, dim=0)
    assert cosine >= 0.999, (method, float(cosine))
    other_masks = unrolled_with_masks(model, train, vals, "te", 0.5, 12, val_seeds)  # the masks matter here
    assert torch.nn.functional.cosine_similarity(other_masks, reference, dim=0) < 0.999


def test_theta_step_sees_the_lookahead_masks(tmp_path):
    """Dropout 0.1 and φ held still (α = 0): θ's recomputed gradient (Eq. 5, its own pass) then equals the
    lookahead's only if both passes drew the same dropout masks; the two settings must end equal."""
    finals = []
    for mode in ("recompute", "lookahead"):
        trainer = make_trainer(tmp_path / mode, model=dropout_model(), max_steps=2, per_device_train_batch_size=4,
                               optim="sgd", learning_rate=0.05, meta_learning_rate=0.0, theta_gradient=mode)
        trainer.train()
        finals.append(snapshot(trainer.model))
    start = snapshot(dropout_model())
    for name in finals[0]:
        torch.testing.assert_close(finals[0][name], finals[1][name], rtol=1e-9, atol=1e-12, msg=name)
    assert any(not torch.equal(finals[0][n], start[n]) for n in start)


# ---------------------------------------------------------------------------------------------- processes
def run_layouts(tmp_path, launch, extra: list[str]):
    script = REPO / "tests" / "scripts" / "ddp_meta_train.py"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    subprocess.run([*launch(2), str(script), str(tmp_path / "ddp"), "4", *extra], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, str(script), str(tmp_path / "single"), "8", *extra], check=True, env=env,
                   timeout=300)
    return [torch.load(tmp_path / layout / f"params_rank{rank}.pt") for layout, rank in
            (("ddp", 0), ("ddp", 1), ("single", 0))]


@pytest.mark.slow
def test_lookahead_theta_gradient_two_processes_equal_one(tmp_path, accelerate_launch):
    rank0, rank1, single = run_layouts(tmp_path, accelerate_launch, ["theta_gradient=lookahead"])
    start = snapshot(tiny_model())
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-6, atol=1e-8, msg=name)
    assert any(not torch.equal(rank0[n], start[n]) for n in rank0)


@pytest.mark.slow
@pytest.mark.parametrize("meta_learning", ["true", "false"])
def test_activation_checkpointing_without_find_unused_parameters(tmp_path, accelerate_launch, meta_learning):
    """Activation checkpointing + ddp_find_unused_parameters=False, single-language steps (the other languages' φ_j
    unused): DDP never waits for φ (kept out of its reducer), both ranks end equal, and equal one process. Meta
    learning (φ_i by the meta step, θ step with φ frozen) and +adpt (φ summed by the plain step)."""
    extra = ["gradient_checkpointing=true", "ddp_find_unused_parameters=false", f"meta_learning={meta_learning}",
             "probs=uniform"]
    rank0, rank1, single = run_layouts(tmp_path, accelerate_launch, extra)
    start = snapshot(tiny_model())
    phi = {n for params in parameter_groups(tiny_model()).languages.values() for n in params}
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-6, atol=1e-8, msg=name)
    assert any(not torch.equal(rank0[n], start[n]) for n in phi)  # φ trained
    assert any(not torch.equal(rank0[n], start[n]) for n in rank0 if n not in phi)  # θ trained


def test_compiled_plain_training_has_room_for_a_graph_per_language(tmp_path):
    import torch._dynamo

    languages = [f"l{k}" for k in range(12)]
    config = MetaXLMConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=37, languages=languages, language_modules="adapters")
    with torch._dynamo.config.patch(recompile_limit=8):  # dynamo's default, restored (as it was) on exit
        make_trainer(tmp_path, model=MetaXLMForMaskedLM(config), meta_learning=False, torch_compile=True)
        assert torch._dynamo.config.recompile_limit >= 2 * len(languages)  # training and evaluation mode

