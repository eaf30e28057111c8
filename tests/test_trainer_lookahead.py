"""MetaXLMTrainer wired to the lookahead of issue 27: `lookahead="optimizer"` (θ' = θ's own AdamW step),
`lookahead_lr`, the meta objective in float32 under bf16 autocast (`meta_full_precision`) and the sampled meta
objective (`meta_languages_per_step`): each trainer step moves φ_i by one optimizer step on the package's own meta
gradient, and a resumed run samples the same languages."""

import copy
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from meta_setup import blocks, make_trainer, tiny_model

from meta_xlm.lookahead import adamw_parameter_step, adamw_states, make_lookahead
from meta_xlm.meta import PreconditionedLookahead, meta_step_gradients
from meta_xlm.modeling_meta_xlm import parameter_groups
from meta_xlm.trainer import MetaXLMTrainingArguments


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def language_params(model, code: str) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in parameter_groups(model).languages[code].items()}


class StateBeforeStep(TrainerCallback):
    """The model, θ's and φ's optimizers as they are when optimizer step `step` (0-based) begins."""

    def __init__(self, trainer, step: int):
        self.trainer, self.step, self.saved = trainer, step, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            trainer = self.trainer
            self.saved = (copy.deepcopy(trainer.model.state_dict()), copy.deepcopy(trainer.optimizer.state_dict()),
                          copy.deepcopy(trainer.meta_optimizer.state_dict()))


def model_and_optimizers_at(trainer, saved):
    """A copy of the model with θ's and φ's AdamW as `saved` holds them (same parameter order as the trainer's)."""
    model_state, theta_state, phi_state = saved
    model = tiny_model()
    model.load_state_dict(model_state)
    named = dict(model.named_parameters())
    names_of = {id(p): n for n, p in trainer.model.named_parameters()}
    optimizers = []
    for live, state in ((trainer.optimizer, theta_state), (trainer.meta_optimizer, phi_state)):
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [named[names_of[id(p)]] for p in g["params"]]} for g in live.param_groups]
        optimizer = torch.optim.AdamW(groups)
        optimizer.load_state_dict(state)
        optimizers.append(optimizer)
    return model, optimizers


def test_optimizer_lookahead_step_moves_phi_by_one_adamw_step_on_the_meta_gradient(tmp_path):
    """Step 2 (θ's AdamW has moments): φ_te moves by exactly φ's AdamW step on `meta_step_gradients` with θ' = θ's
    own AdamW step from its state then. The SGD lookahead's hypergradient differs (the option is wired), and the
    first steps (AdamW's Jacobian near-singular where g = 0 at step 0) stay finite."""
    trainer = make_trainer(tmp_path, train=blocks({"te": 8}, seed=3), max_steps=2, per_device_train_batch_size=4,
                           optim="adamw_torch", learning_rate=1e-2, meta_learning_rate=3e-2, weight_decay=0.01,
                           lookahead="optimizer", probs={"te": 1.0})
    callback = StateBeforeStep(trainer, step=1)
    trainer.add_callback(callback)
    second_batch = list(trainer.get_train_dataloader())[1]
    val_batches = trainer.meta_validation.batches(1)
    trainer.train()
    reference, (theta_optimizer, phi_optimizer) = model_and_optimizers_at(trainer, callback.saved)
    groups = parameter_groups(reference)
    phi_before = {n: p.detach().clone() for n, p in groups.languages["te"].items()}
    lookahead = PreconditionedLookahead(make_lookahead("optimizer", None, theta_optimizer, groups.shared))
    step = meta_step_gradients(reference, [second_batch], val_batches, "te", lookahead_lr=1.0,
                               method=trainer.args.hypergradient, lookahead=lookahead)
    sgd = meta_step_gradients(reference, [second_batch], val_batches, "te", lookahead_lr=1e-2,
                              method=trainer.args.hypergradient)
    assert step.higher_order_ratio > 1e-3 and torch.isfinite(step.higher_order_share)
    difference = max((step.hypergradient[n] - sgd.hypergradient[n]).abs().max() for n in phi_before)
    assert difference > 1e-6  # the lookahead kind changes the hypergradient: a fallback to SGD would show
    states = adamw_states(phi_optimizer, groups.languages["te"])
    after = language_params(trainer.model, "te")
    for name, value in phi_before.items():
        expected = adamw_parameter_step(value, step.hypergradient[name], states[name])
        torch.testing.assert_close(after[name], expected, rtol=1e-9, atol=1e-12)
    logs = [entry for entry in trainer.state.log_history if "meta_loss" in entry]
    assert [entry["meta_skipped_updates"] for entry in logs] == [0, 0]
    assert logs[1]["meta_higher_order_ratio"] == pytest.approx(step.higher_order_ratio)
    assert all(0 < entry["meta_lookahead_share"] < float("inf") for entry in logs)


@pytest.mark.parametrize("lookahead_lr, method", [(0.2, "double_backward"), (0.0, "first_order")])
def test_lookahead_lr_is_the_lookahead_rate_apart_from_thetas(tmp_path, lookahead_lr, method):
    """φ_te − α · meta_step_gradients(β = lookahead_lr ≠ θ's learning rate), SGD for φ (linear in the gradient).
    lookahead_lr = 0 with first_order: θ' = θ, so the hypergradient is w_i ∂L_val^i/∂φ_i at θ alone."""
    trainer = make_trainer(tmp_path, train=blocks({"te": 8}, seed=3), max_steps=1, per_device_train_batch_size=4,
                           optim="sgd", learning_rate=0.05, meta_learning_rate=0.3, lookahead_lr=lookahead_lr,
                           hypergradient=method)
    reference = tiny_model()
    reference.load_state_dict(trainer.model.state_dict())
    before = language_params(trainer.model, "te")
    first_batch = next(iter(trainer.get_train_dataloader()))
    val_batches = trainer.meta_validation.batches(0)
    trainer.train()
    step = meta_step_gradients(reference, [first_batch], val_batches, "te", lookahead_lr=lookahead_lr, method=method)
    at_theta_rate = meta_step_gradients(reference, [first_batch], val_batches, "te", lookahead_lr=0.05, method=method)
    assert max((step.direct[n] - at_theta_rate.direct[n]).abs().max() for n in before) > 1e-8  # β matters
    if lookahead_lr == 0:
        val = val_batches["te"]
        loss = reference(**val).loss / 3  # w_te = 1/L, L = 3
        direct = dict(zip(before, torch.autograd.grad(loss, list(parameter_groups(reference).languages["te"].values()))))
        for name in before:
            torch.testing.assert_close(step.hypergradient[name], direct[name], rtol=1e-9, atol=1e-13)
    after = language_params(trainer.model, "te")
    for name, value in before.items():
        torch.testing.assert_close(after[name], value - 0.3 * step.hypergradient[name], rtol=1e-9, atol=1e-12)


def test_bf16_meta_objective_sees_the_lookahead_in_full_precision(tmp_path):
    """θ's learning rate 1e-5 moves θ' by ~1e-6 per weight, below bf16's resolution at weights ~0.02. The lookahead
    share under bf16 training with the meta objective in float32 matches a float32 run (measured 7.08e-5 vs
    7.10e-5); under plain autocast (accelerate's own forward wrapper included) it is rounding noise (measured 4.5e-3)."""

    def shares(**args):
        trainer = make_trainer(tmp_path / str(len(args)), model=tiny_model(torch.float32), max_steps=2,
                               per_device_train_batch_size=4, learning_rate=1e-5, **args)
        trainer.train()
        return torch.tensor([entry["meta_lookahead_share"] for entry in trainer.state.log_history if "meta_loss" in entry])

    reference, treated = shares(), shares(bf16=True)
    plain = shares(bf16=True, meta_full_precision=False)
    assert len(reference) == 2 and (reference > 0).all()
    torch.testing.assert_close(treated, reference, rtol=0.05, atol=0)
    assert ((plain - reference).abs() > 5 * reference).all(), (plain, reference)


def test_sampled_meta_objective_reads_k_languages_and_sizes_its_batch_by_k(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=3, per_device_train_batch_size=6, meta_languages_per_step=2)
    every = make_trainer(tmp_path / "every", max_steps=1, per_device_train_batch_size=6)
    assert (trainer.meta_validation.batch_size, every.meta_validation.batch_size) == (3, 2)  # 6 / k, 6 / L
    seen = []
    compute = trainer.optimizer_step.compute
    trainer.optimizer_step.compute = lambda *args, **kwargs: seen.append(kwargs["meta_weights"]) or compute(*args,
                                                                                                             **kwargs)
    trainer.train()
    assert [len(weights) for weights in seen] == [2, 2, 2]
    for weights in seen:  # w_i = 1/L, the other w_j = (L − 1)/((k − 1) L): unbiased for M
        assert sorted(weights.values()) == pytest.approx([1 / 3, 2 / 3])
    assert [entry["meta_objective_languages"] for entry in trainer.state.log_history if "meta_loss" in entry] == [2] * 3


def test_resume_with_sampled_languages_reproduces_the_run(tmp_path):
    """k = 2 of L = 3 and the optimizer lookahead: the languages drawn after a restart are those of the full run."""
    args = {"max_steps": 4, "per_device_train_batch_size": 4, "save_strategy": "steps", "save_steps": 2,
            "meta_languages_per_step": 2, "lookahead": "optimizer", "optim": "adamw_torch"}
    full = make_trainer(tmp_path / "full", **args)
    full.train()
    resumed = make_trainer(tmp_path / "full", model=tiny_model(seed=123), **args)  # weights come from the checkpoint
    drawn, objective = [], resumed.optimizer_step.meta_objective
    resumed.optimizer_step.meta_objective = lambda langs, lang, step: drawn.append(
        (step, lang, tuple(objective(langs, lang, step)))) or objective(langs, lang, step)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))

    def after_step_2(trainer):
        return [(e["step"], e["loss"], e["meta_loss"]) for e in trainer.state.log_history if "loss" in e and e["step"] > 2]

    assert len(after_step_2(full)) == 2 and after_step_2(resumed) == after_step_2(full)
    for name, value in full.model.named_parameters():
        assert torch.equal(resumed.model.get_parameter(name), value), name
    languages = list(full.optimizer_step.language_params)
    expected = [(step, lang, tuple(full.optimizer_step.meta_objective(languages, lang, step))) for step, lang, _ in drawn]
    assert [step for step, _, _ in drawn] == [2, 3] and drawn == expected


def test_lookahead_settings_are_validated_with_the_field_named(tmp_path):
    for field, value, message in (("lookahead", "adam", "lookahead='adam'"), ("lookahead_lr", -1.0, "lookahead_lr"),
                                  ("meta_languages_per_step", 1, "meta_languages_per_step must be >= 2")):
        with pytest.raises(ValueError, match=message):
            MetaXLMTrainingArguments(output_dir=str(tmp_path), use_cpu=True, meta_learning=True, **{field: value})
    trainer = make_trainer(tmp_path, max_steps=1, optim="sgd", lookahead="optimizer")
    with pytest.raises(TypeError, match="reproduces torch.optim.AdamW only; θ's optimizer is SGD"):
        trainer.create_optimizer()


def test_model_card_names_the_lookahead_and_its_diagnostics():
    from meta_xlm.model_card import training_rows

    state = {"global_step": 2, "log_history": [{"meta_objective_languages": 2.0, "meta_higher_order_ratio": 0.1,
                                                "meta_lookahead_share": 0.25}, {"meta_lookahead_share": 0.75}]}
    rows = dict(training_rows({"meta_learning": True, "lookahead": "optimizer", "meta_languages_per_step": 2},
                              state, "cpu", 1))
    assert rows["lookahead θ'"] == "θ's AdamW step (optimizer)" and rows["lookahead rate"] == "θ's learning rate"
    assert rows["meta objective languages per step (k)"] == "2"
    assert rows["lookahead share ‖Δ direct‖ / ‖direct‖ (mean)"] == "0.5"
    paper = dict(training_rows({"meta_learning": True}, None, "cpu", 1))  # a config from before issue 27
    assert paper["lookahead θ'"] == "θ − β g (sgd, Eq. 3)" and paper["meta objective languages per step (k)"] == "all"
