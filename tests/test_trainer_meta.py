"""MetaXLMTrainer's meta path cannot go wrong silently: the φ update is one optimizer step on `meta_step_gradients`,
non-finite hypergradients are skipped and counted, misuse raises, frozen parameters and other optimizers work, and
the hypergradient does not depend on the process layout."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainerCallback

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from meta_setup import blocks, deterministic_collator, make_trainer, tiny_model

from meta_xlm import trainer as trainer_module
from meta_xlm.meta import meta_step_gradients
from meta_xlm.modeling_meta_xlm import parameter_groups
from meta_xlm.trainer import MetaXLMTrainer, MetaXLMTrainingArguments

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def language_params(model, code: str) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in parameter_groups(model).languages[code].items()}


class PhiAtStepEnd(TrainerCallback):
    def __init__(self):
        self.snapshots = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.snapshots.append(language_params(model, "te"))


def test_one_step_moves_phi_by_one_optimizer_step_on_meta_step_gradients(tmp_path):
    """φ_te after one trainer step == φ_te − α · meta_step_gradients(β = θ's learning rate, the same batches):
    SGD (so the step is linear in the hypergradient: a wrong β, a flipped sign or a dropped term shows), α ≠ β."""
    trainer = make_trainer(tmp_path, train=blocks({"te": 8}, seed=3), max_steps=1, per_device_train_batch_size=4,
                           optim="sgd", learning_rate=0.05, meta_learning_rate=0.3)
    reference = tiny_model()
    reference.load_state_dict(trainer.model.state_dict())
    before = language_params(trainer.model, "te")
    first_batch = next(iter(trainer.get_train_dataloader()))
    val_batches = trainer.meta_validation.batches(0)
    trainer.train()
    step = meta_step_gradients(reference, [first_batch], val_batches, "te", lookahead_lr=0.05,
                               method=trainer.args.hypergradient)  # the default
    assert isinstance(trainer.meta_optimizer, torch.optim.SGD)
    assert step.higher_order_ratio > 1e-3  # the higher-order term is visible in the comparison
    after = language_params(trainer.model, "te")
    for name, value in before.items():
        torch.testing.assert_close(after[name], value - 0.3 * step.hypergradient[name], rtol=1e-9, atol=1e-12)
    logs = [entry for entry in trainer.state.log_history if "meta_loss" in entry]
    assert logs[0]["meta_loss"] == pytest.approx(float(step.meta_loss), abs=1e-4)
    assert logs[0]["meta_higher_order_ratio"] == pytest.approx(step.higher_order_ratio)
    assert logs[0]["meta_skipped_updates"] == 0


def test_non_finite_hypergradient_skips_phi_update_and_training_goes_on(tmp_path, monkeypatch):
    calls = []

    def nan_on_first_call(*args, **kwargs):
        step = meta_step_gradients(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            first = next(iter(step.hypergradient))
            step.hypergradient[first] = torch.full_like(step.hypergradient[first], float("nan"))
        return step

    monkeypatch.setattr(trainer_module, "meta_step_gradients", nan_on_first_call)
    trainer = make_trainer(tmp_path, max_steps=2, per_device_train_batch_size=4, probs={"te": 1.0})
    before = language_params(trainer.model, "te")
    phi = PhiAtStepEnd()
    trainer.add_callback(phi)
    trainer.train()
    for name, value in before.items():
        assert torch.equal(phi.snapshots[0][name], value), name  # step 1: φ unchanged, no NaN written
        assert torch.isfinite(phi.snapshots[1][name]).all()
    assert any(not torch.equal(phi.snapshots[1][n], before[n]) for n in before)  # step 2 updates φ
    assert [e["meta_skipped_updates"] for e in trainer.state.log_history if "loss" in e] == [1, 1]
    assert trainer.meta_lr_scheduler.last_epoch == 1  # φ's scheduler stepped once: only when φ stepped


def test_frozen_embeddings_train_with_meta_learning(tmp_path):
    model = tiny_model()
    model.get_input_embeddings().weight.requires_grad_(False)  # X-MOD's recipe (the decoder is tied to it)
    trainer = make_trainer(tmp_path, model=model, max_steps=2, per_device_train_batch_size=4, probs={"te": 1.0})
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    name_of_embeddings = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    assert name_of_embeddings not in trainer.meta_groups.shared
    assert torch.equal(model.get_parameter(name_of_embeddings), before[name_of_embeddings])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert set(parameter_groups(model).languages["te"]) <= changed
    assert any(n in changed for n in trainer.meta_groups.shared)


def test_optimizer_step_without_meta_update_raises(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, per_device_train_batch_size=4)
    trainer.get_batch_samples = functools.partial(Trainer.get_batch_samples, trainer)  # the hook no longer fires
    with pytest.raises(RuntimeError, match="started without a meta update"):
        trainer.train()


def test_misuse_is_refused_at_construction(tmp_path):
    with pytest.raises(ValueError, match="does not support fp16=True"):
        MetaXLMTrainingArguments(output_dir=str(tmp_path), meta_learning=True, fp16=True, use_cpu=True)
    model = tiny_model()
    with pytest.raises(ValueError, match="not `optimizers=\\(...\\)`"):
        MetaXLMTrainer(
            model=model, args=MetaXLMTrainingArguments(output_dir=str(tmp_path), meta_learning=True, use_cpu=True),
            train_dataset=blocks({"te": 4}, seed=0), data_collator=deterministic_collator,
            meta_validation_datasets={code: blocks({code: 4}, seed=1) for code in ("en", "te", "pt")},
            optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None),
        )
    trainer = make_trainer(tmp_path, max_steps=1)  # default: φ's optimizer is AdamW at rate α
    trainer.create_optimizer()
    assert isinstance(trainer.meta_optimizer, torch.optim.AdamW)
    assert trainer.meta_optimizer.param_groups[0]["lr"] == trainer.args.meta_lr


@pytest.mark.slow
@pytest.mark.parametrize("average_tokens", ["true", "false"])
def test_two_process_hypergradient_equals_one_process(tmp_path, accelerate_launch, average_tokens):
    """2 gloo processes, each with half of a fixed global batch: hypergradient and logged meta loss equal one
    process over the whole batch, whatever average_tokens_across_devices says."""
    script = REPO / "tests" / "scripts" / "ddp_meta_hypergradient.py"
    launch = accelerate_launch(2)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    subprocess.run([*launch, str(script), str(tmp_path / "ddp"), average_tokens], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, str(script), str(tmp_path / "single"), average_tokens], check=True, env=env,
                   timeout=300)
    single = torch.load(tmp_path / "single" / "meta_step_rank0.pt")
    for rank in (0, 1):
        ddp = torch.load(tmp_path / "ddp" / f"meta_step_rank{rank}.pt")
        torch.testing.assert_close(ddp["meta_loss"], single["meta_loss"], rtol=1e-9, atol=0)
        for name, grad in single["hypergradient"].items():
            torch.testing.assert_close(ddp["hypergradient"][name], grad, rtol=1e-7, atol=1e-12, msg=name)
