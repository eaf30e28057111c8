"""MetaXLMTrainer: Algorithm 1 inside transformers' Trainer (φ_i only, θ with the new φ_i, GA, resume, DDP)."""

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from meta_setup import blocks, deterministic_collator, make_trainer, snapshot, tiny_model

from meta_xlm.modeling_meta_xlm import parameter_groups
from meta_xlm.trainer import MetaXLMTrainingArguments

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def test_meta_step_moves_only_phi_i_and_theta_uses_the_new_phi_i(tmp_path):
    train = blocks({"te": 4}, seed=3)
    trainer = make_trainer(tmp_path, train=train, max_steps=1, per_device_train_batch_size=4, optim="sgd",
                           learning_rate=0.05, meta_learning_rate=0.01, theta_gradient="recompute")
    model = trainer.model
    before = snapshot(model)
    trainer.train()
    groups = parameter_groups(model)
    for code in ("en", "pt"):
        for name in groups.languages[code]:
            assert torch.equal(model.get_parameter(name), before[name]), name  # φ_j untouched, bit for bit
    for name in groups.languages["te"]:
        assert not torch.equal(model.get_parameter(name), before[name]), name
    # θ by hand: one SGD step on the same batch with φ_te already at its NEW value (Eq. 5).
    reference = tiny_model()
    reference.load_state_dict({**before, **{n: model.get_parameter(n).detach() for n in groups.languages["te"]}},
                              strict=False)  # tied decoder weights follow the embeddings
    batch = deterministic_collator([train[i] for i in range(4)])
    ref_groups = parameter_groups(reference)
    grads = torch.autograd.grad(reference(**batch).loss, list(ref_groups.shared.values()))
    for (name, param), grad in zip(ref_groups.shared.items(), grads):
        torch.testing.assert_close(model.get_parameter(name), param.detach() - 0.05 * grad, rtol=1e-6, atol=1e-9)
    # ... and not with the old φ_te: the difference is visible.
    old = tiny_model()
    old.load_state_dict(before, strict=False)
    old_grad = torch.autograd.grad(old(**batch).loss, [old.get_parameter(n) for n in ref_groups.shared])
    assert any(not torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(grads, old_grad))


def test_theta_optimizer_holds_no_language_parameter(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, per_device_train_batch_size=4)
    trainer.create_optimizer()
    language_ids = {id(p) for ps in parameter_groups(trainer.model).languages.values() for p in ps.values()}
    theta_ids = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    meta_ids = {id(p) for group in trainer.meta_optimizer.param_groups for p in group["params"]}
    assert not theta_ids & language_ids and meta_ids == language_ids
    assert len(theta_ids) == len(parameter_groups(trainer.model).shared)


@pytest.mark.parametrize("method", ["finite_difference", "forward_difference"])
def test_gradient_accumulation_equals_the_doubled_batch(tmp_path, method):
    """GA=2 × 4 and GA=1 × 8 see the same examples per step (LanguageBatchSampler) and must end equal; float64,
    tolerance 1e-9 absolute (the model's loss is computed in float32: ~1e-7 relative per step)."""
    finals = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        trainer = make_trainer(tmp_path / f"ga{accumulation}", max_steps=3, per_device_train_batch_size=batch_size,
                               gradient_accumulation_steps=accumulation, max_grad_norm=1.0, hypergradient=method)
        trainer.train()
        finals.append(snapshot(trainer.model))
    start = snapshot(tiny_model())
    for name in finals[0]:
        torch.testing.assert_close(finals[1][name], finals[0][name], rtol=1e-5, atol=1e-7, msg=name)
    assert any(not torch.equal(finals[0][n], start[n]) for n in finals[0])


def test_resume_reproduces_the_loss_sequence(tmp_path):
    args = {"max_steps": 4, "per_device_train_batch_size": 4, "save_strategy": "steps", "save_steps": 2}
    full = make_trainer(tmp_path / "full", **args)
    full.train()
    assert os.path.isfile(tmp_path / "full" / "checkpoint-2" / "meta_optimizer.pt")
    resumed = make_trainer(tmp_path / "full", model=tiny_model(seed=123), **args)  # weights come from the checkpoint
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))

    def losses_after_step_2(trainer):
        history = trainer.state.log_history
        return [(e["step"], e["loss"], e["meta_loss"]) for e in history if "loss" in e and e["step"] > 2]

    assert len(losses_after_step_2(full)) == 2
    assert losses_after_step_2(resumed) == losses_after_step_2(full)
    final_full, final_resumed = snapshot(full.model), snapshot(resumed.model)
    for name in final_full:
        assert torch.equal(final_full[name], final_resumed[name]), name


def test_bf16_autocast_meta_steps(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, per_device_train_batch_size=4, bf16=True, max_grad_norm=1.0,
                           model=tiny_model(torch.float32), probs={"te": 1.0})
    before = snapshot(trainer.model)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    groups = parameter_groups(trainer.model)
    for code in ("en", "pt"):
        assert all(torch.equal(trainer.model.get_parameter(n), before[n]) for n in groups.languages[code])
    assert all(not torch.equal(trainer.model.get_parameter(n), before[n]) for n in groups.languages["te"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay float32


def test_no_memory_growth_over_50_meta_steps(tmp_path):
    counts = []

    class CountTensors(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (5, 20, 35, 50):
                gc.collect()
                # type() rather than isinstance: isinstance on some lazy module proxies is slow and warns
                counts.append(sum(1 for o in gc.get_objects() if type(o) in (torch.Tensor, torch.nn.Parameter)))

    trainer = make_trainer(tmp_path, max_steps=50, per_device_train_batch_size=1, logging_steps=10,
                           model=tiny_model(torch.float32))
    trainer.add_callback(CountTensors())
    trainer.train()
    assert len(counts) == 4
    assert max(counts[1:]) <= counts[0], counts  # nothing retained step after step (no leaked graph)
    assert all(p.grad is None or p.grad.grad_fn is None for p in trainer.model.parameters())


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="'second_order' is not one of"):
        MetaXLMTrainingArguments(output_dir=str(tmp_path), hypergradient="second_order", use_cpu=True)
    with pytest.raises(ValueError, match=r"no validation data for languages \['pt'\]"):
        make_trainer(tmp_path, validation={code: blocks({code: 4}, seed=0) for code in ("en", "te")})
    no_lang = blocks({"en": 8}, seed=0).remove_columns("lang_ids")
    trainer = make_trainer(tmp_path, train=no_lang, max_steps=1, per_device_train_batch_size=4)
    with pytest.raises(ValueError, match="no 'lang_ids' column"):
        trainer.train()
    with pytest.raises(ValueError, match="has no 'lang_ids'"):
        trainer._batch_language([{"input_ids": torch.zeros(2, 3, dtype=torch.long)}])
    with pytest.raises(ValueError, match="needs trainable language-specific parameters"):
        model = tiny_model()
        model.config.language_modules = "none"
        from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM

        make_trainer(tmp_path, model=MetaXLMForMaskedLM(model.config))


def test_meta_learning_false_is_the_plain_trainer_step(tmp_path):
    from transformers import Trainer, TrainingArguments

    finals = []
    for trainer_class in ("meta", "plain"):
        model = tiny_model()
        train = blocks({"en": 16}, seed=2)
        args = {"output_dir": str(tmp_path / trainer_class), "use_cpu": True, "report_to": "none", "max_steps": 2,
                "per_device_train_batch_size": 4, "seed": 3, "disable_tqdm": True, "dataloader_pin_memory": False}
        if trainer_class == "meta":
            trainer = make_trainer(tmp_path / "meta", model=model, train=train, meta_learning=False, max_steps=2,
                                   per_device_train_batch_size=4, seed=3, learning_rate=5e-5,
                                   lr_scheduler_type="linear", max_grad_norm=1.0)
        else:
            trainer = Trainer(model=model, args=TrainingArguments(**args), train_dataset=train,
                              data_collator=deterministic_collator)
        trainer.train()
        finals.append(snapshot(trainer.model))
    for name in finals[0]:
        assert torch.equal(finals[0][name], finals[1][name]), name


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, accelerate_launch):
    """2 CPU processes (per-device batch 4) vs 1 process (batch 8) over the same global batches, 3 meta steps with
    the default (exact) hypergradient: ranks end bit-identical; vs one process within 1e-6 relative (float64 model, float32 loss;
    the all-reduce sums in another order)."""
    script = REPO / "tests" / "scripts" / "ddp_meta_train.py"
    launch = accelerate_launch(2)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    subprocess.run([*launch, str(script), str(tmp_path / "ddp"), "4"], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, str(script), str(tmp_path / "single"), "8"], check=True, env=env, timeout=300)
    rank0 = torch.load(tmp_path / "ddp" / "params_rank0.pt")
    rank1 = torch.load(tmp_path / "ddp" / "params_rank1.pt")
    single = torch.load(tmp_path / "single" / "params_rank0.pt")
    start = snapshot(tiny_model())
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-6, atol=1e-8, msg=name)
    assert any(not torch.equal(rank0[n], start[n]) for n in rank0)
