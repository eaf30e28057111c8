"""The bilevel meta step's math (meta.py): finite difference vs exact (double backward, forward-over-reverse) vs first
order, on tiny float64 models."""

import pytest
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from meta_xlm import meta
from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.meta import (
    attached_hvp, count_labels, hypergradient, meta_step_gradients, release_values, train_gradient,
    trainable_parameter_groups,
)
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM, parameter_groups

LANGUAGES = ["en", "te", "pt"]


def tiny_model(dtype=torch.float64) -> MetaXLMForMaskedLM:
    config = MetaXLMConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, languages=LANGUAGES,
        language_modules="adapters",
    )
    model = MetaXLMForMaskedLM(config).to(dtype)
    # Random adapters (not the near-identity start) make every φ_i gradient and second-order term non-trivial.
    with torch.no_grad():
        for params in parameter_groups(model).languages.values():
            for p in params.values():
                p.normal_(0.0, 0.05)
    return model


def mlm_batch(language: str, batch_size: int = 13, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 99, (batch_size, length), generator=generator)
    labels = torch.where(torch.rand(batch_size, length, generator=generator) < 0.4, input_ids, -100)
    labels[:, 0] = input_ids[:, 0]  # at least one prediction per row
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "lang_ids": torch.full((batch_size,), LANGUAGES.index(language)),
    }


def val_batches(seed: int = 100) -> dict[str, dict[str, torch.Tensor]]:
    return {code: mlm_batch(code, batch_size=5, seed=seed + k) for k, code in enumerate(LANGUAGES)}


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])


def unrolled_reference(model, train_batch, vals, language, lookahead_lr) -> dict[str, torch.Tensor]:
    """d/dφ_i of M(θ − β ∇_θ L_train(θ, φ_i), φ) through the whole unrolled graph: independent of meta.py."""
    groups = parameter_groups(model)
    phi = groups.languages[language]
    with sdpa_kernel(SDPBackend.MATH):
        train_loss = model(**train_batch).loss
        grads = torch.autograd.grad(train_loss, list(groups.shared.values()), create_graph=True)
        theta_prime = {n: p - lookahead_lr * g for (n, p), g in zip(groups.shared.items(), grads)}
        meta = sum(functional_call(model, theta_prime, args=(), kwargs=b, strict=False).loss for b in vals.values())
        meta = meta / len(vals)
        return dict(zip(phi, torch.autograd.grad(meta, list(phi.values()))))


def test_exact_matches_unrolled_autodiff():
    model = tiny_model()
    train, vals = mlm_batch("te"), val_batches()
    exact = hypergradient(model, train, vals, "te", lookahead_lr=0.5, method="exact")
    reference = unrolled_reference(model, train, vals, "te", lookahead_lr=0.5)
    torch.testing.assert_close(flat(exact), flat(reference), rtol=1e-9, atol=1e-12)


def cosine_and_relative_error(approx: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    cosine = torch.nn.functional.cosine_similarity(approx, exact, dim=0)
    return float(cosine), float((approx - exact).norm() / exact.norm())


def test_finite_difference_matches_exact_float64():
    """Eq. 8 against the exact double-backward hypergradient. β = 0.1 makes the higher-order term comparable to
    the direct one, so both terms are tested. Central differences are accurate to O(ε²): on this tiny, strongly
    curved model the default ε = 0.01/‖g‖ gives ~1.2e-3 relative error, ε = 0.001/‖g‖ ~1.2e-5."""
    model = tiny_model()
    train, vals = mlm_batch("te"), val_batches()
    exact = meta_step_gradients(model, [train], vals, "te", lookahead_lr=0.1, method="exact")
    higher, direct = flat(exact.higher_order).norm() * 0.1, flat(exact.direct).norm()
    assert 0.2 * direct < higher < 5 * direct
    for fd_epsilon, max_relative_error in ((1e-3, 1e-3), (1e-2, 5e-3)):
        fd = meta_step_gradients(
            model, [train], vals, "te", lookahead_lr=0.1, method="finite_difference", fd_epsilon=fd_epsilon
        )
        cosine, relative_error = cosine_and_relative_error(flat(fd.hypergradient), flat(exact.hypergradient))
        assert cosine >= 0.999 and relative_error <= max_relative_error, (fd_epsilon, cosine, relative_error)


def test_finite_difference_error_shrinks_as_epsilon_squared():
    model = tiny_model()
    train, vals = mlm_batch("te"), val_batches()
    exact = flat(meta_step_gradients(model, [train], vals, "te", lookahead_lr=0.1, method="exact").higher_order)
    errors = []
    for fd_epsilon in (1e-2, 1e-3):
        fd = meta_step_gradients(
            model, [train], vals, "te", lookahead_lr=0.1, method="finite_difference", fd_epsilon=fd_epsilon
        )
        errors.append(cosine_and_relative_error(flat(fd.higher_order), exact)[1])
    assert errors[1] < errors[0] / 30, errors  # ε / 10 -> error / ~100


def test_forward_difference_is_first_order_accurate_and_matches_exact():
    """The one-sided variant (one probe; base point from the lookahead's backward pass): error O(ε). On this
    model ε = 0.001/‖g‖ gives ~3.6e-3 relative error of the hypergradient (central: ~1.2e-5), 0.01/‖g‖ ~3.6e-2."""
    model = tiny_model()
    train, vals = mlm_batch("te"), val_batches()
    exact = meta_step_gradients(model, [train], vals, "te", lookahead_lr=0.1, method="exact")
    errors = []
    for fd_epsilon in (1e-2, 1e-3):
        forward = meta_step_gradients(
            model, [train], vals, "te", lookahead_lr=0.1, method="forward_difference", fd_epsilon=fd_epsilon
        )
        torch.testing.assert_close(flat(forward.direct), flat(exact.direct), rtol=1e-10, atol=1e-13)
        errors.append(cosine_and_relative_error(flat(forward.hypergradient), flat(exact.hypergradient)))
    (cosine_coarse, error_coarse), (cosine_fine, error_fine) = errors
    assert cosine_fine >= 0.9999 and error_fine <= 1e-2, errors
    assert cosine_coarse >= 0.999, errors
    assert error_coarse / 20 < error_fine < error_coarse / 5, errors  # ε / 10 -> error / ~10: first order in ε


def test_first_order_is_the_direct_term():
    model = tiny_model()
    train, vals = mlm_batch("pt"), val_batches()
    first = meta_step_gradients(model, [train], vals, "pt", lookahead_lr=0.5, method="first_order")
    exact = meta_step_gradients(model, [train], vals, "pt", lookahead_lr=0.5, method="exact")
    torch.testing.assert_close(flat(first.hypergradient), flat(first.direct), rtol=0, atol=0)
    torch.testing.assert_close(flat(first.direct), flat(exact.direct))
    # The direct term is ∂/∂φ_i of L_val^i(θ', φ_i) / L: check it by hand at θ' from the lookahead.
    groups = parameter_groups(model)
    phi = groups.languages["pt"]
    grads = torch.autograd.grad(model(**train).loss, list(groups.shared.values()))
    theta_prime = {n: (p - 0.5 * g).detach() for (n, p), g in zip(groups.shared.items(), grads)}
    loss = functional_call(model, theta_prime, args=(), kwargs=vals["pt"], strict=False).loss / len(LANGUAGES)
    by_hand = dict(zip(phi, torch.autograd.grad(loss, list(phi.values()))))
    torch.testing.assert_close(flat(first.direct), flat(by_hand))


def test_zero_lookahead_lr_gives_the_plain_validation_gradient():
    model = tiny_model()
    train, vals = mlm_batch("en"), val_batches()
    phi = parameter_groups(model).languages["en"]
    loss = model(**vals["en"]).loss / len(LANGUAGES)
    plain = dict(zip(phi, torch.autograd.grad(loss, list(phi.values()))))
    for method in ("finite_difference", "forward_difference", "exact", "first_order"):
        got = hypergradient(model, train, vals, "en", lookahead_lr=0.0, method=method)
        torch.testing.assert_close(flat(got), flat(plain), rtol=1e-10, atol=1e-13)


def test_only_phi_i_gets_a_hypergradient_and_weights_are_untouched():
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    got = hypergradient(model, mlm_batch("te"), val_batches(), "te", lookahead_lr=0.5, method="finite_difference")
    assert set(got) == set(parameter_groups(model).languages["te"])
    assert all(".adapter_modules.te." in name for name in got)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name  # bit-identical after the θ ± εg probes
        assert p.grad is None, name


@pytest.mark.parametrize("method", ["finite_difference", "forward_difference"])
def test_micro_batches_add_up_to_the_whole_batch(method):
    model = tiny_model()
    train, vals = mlm_batch("te", batch_size=12), val_batches()
    halves = [{k: v[:6] for k, v in train.items()}, {k: v[6:] for k, v in train.items()}]
    whole = meta_step_gradients(model, [train], vals, "te", lookahead_lr=0.5, method=method)
    split = meta_step_gradients(model, halves, vals, "te", lookahead_lr=0.5, method=method)
    torch.testing.assert_close(flat(split.hypergradient), flat(whole.hypergradient), rtol=1e-7, atol=1e-10)


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    train, vals = mlm_batch("te"), val_batches()
    with pytest.raises(ValueError, match="'second_order' is not one of"):
        hypergradient(model, train, vals, "te", lookahead_lr=0.1, method="second_order")
    with pytest.raises(ValueError, match=r"missing: \['pt'\]"):
        hypergradient(model, train, {k: v for k, v in vals.items() if k != "pt"}, "te", lookahead_lr=0.1,
                      method="first_order")
    with pytest.raises(ValueError, match="'fr' has no trainable language-specific parameters"):
        hypergradient(model, train, vals, "fr", lookahead_lr=0.1, method="first_order")


@pytest.mark.parametrize("method", ["forward_over_reverse", "exact"])
def test_exact_methods_match_unrolled_autodiff_with_micro_batches(method):
    """Forward-over-reverse and double backward are both exact: equal to the unrolled graph (float64), also when
    the step's batch comes as two micro-batches."""
    model = tiny_model()
    train, vals = mlm_batch("te", batch_size=12), val_batches()
    halves = [{k: v[:6] for k, v in train.items()}, {k: v[6:] for k, v in train.items()}]
    step = meta_step_gradients(model, halves, vals, "te", lookahead_lr=0.5, method=method)
    reference = unrolled_reference(model, train, vals, "te", lookahead_lr=0.5)
    torch.testing.assert_close(flat(step.hypergradient), flat(reference), rtol=1e-9, atol=1e-12)
    ratio = 0.5 * flat(step.higher_order).norm() / flat(step.direct).norm()
    assert step.higher_order_ratio == pytest.approx(float(ratio)) and step.higher_order_ratio > 0.01


def test_frozen_parameters_take_no_part_in_the_meta_step():
    """Frozen embeddings (X-MOD's recipe): θ' = θ for them, so the hypergradient equals the unrolled one of a model
    whose embeddings are constants; frozen φ_i parameters get no hypergradient entry."""
    model = tiny_model()
    embeddings = model.get_input_embeddings().weight
    embeddings.requires_grad_(False)
    frozen_phi = next(iter(parameter_groups(model).languages["te"].values()))
    frozen_phi.requires_grad_(False)
    train, vals = mlm_batch("te"), val_batches()
    groups = trainable_parameter_groups(model)
    assert all(p.requires_grad for p in groups.shared.values()) and len(groups.shared) < len(parameter_groups(model).shared)
    step = meta_step_gradients(model, [train], vals, "te", lookahead_lr=0.5, method="forward_over_reverse")
    assert set(step.hypergradient) == set(groups.languages["te"])
    with sdpa_kernel(SDPBackend.MATH):  # unrolled, differentiating only through the trainable θ
        phi = groups.languages["te"]
        grads = torch.autograd.grad(model(**train).loss, list(groups.shared.values()), create_graph=True)
        theta_prime = {n: p - 0.5 * g for (n, p), g in zip(groups.shared.items(), grads)}
        meta = sum(functional_call(model, theta_prime, args=(), kwargs=b, strict=False).loss for b in vals.values())
        reference = torch.autograd.grad(meta / len(vals), list(phi.values()))
    torch.testing.assert_close(flat(step.hypergradient), torch.cat([g.reshape(-1) for g in reference]),
                               rtol=1e-9, atol=1e-12)


def test_meta_loss_is_summed_across_processes():
    """meta_objective_gradients returns the global M: with an all-reduce that doubles (two identical processes,
    each normalised by the doubled global count), M and the gradients equal one process's."""
    model = tiny_model()
    train, vals = mlm_batch("te"), val_batches()
    one = meta_step_gradients(model, [train], vals, "te", lookahead_lr=0.5, method="forward_over_reverse")
    twice = meta_step_gradients(
        model, [train], vals, "te", lookahead_lr=0.5, method="forward_over_reverse",
        train_num_items=2 * count_labels([train]),
        val_num_items={code: 2 * count_labels([b]) for code, b in vals.items()},
        all_reduce_sum=lambda t: 2 * t,
    )
    torch.testing.assert_close(twice.meta_loss, one.meta_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(flat(twice.hypergradient), flat(one.hypergradient), rtol=1e-9, atol=1e-12)


def _lookahead_pass(model, train, groups):
    return train_gradient(model, [train], groups.shared, count_labels([train]), [0], keep_graph=True)


def test_released_lookahead_gradient_keeps_the_graph_the_exact_term_reads():
    """`release_values` frees the values of the lookahead's attached θ-gradient (θ-sized) but not its graph: the
    double backward, a vector-Jacobian product through that graph, gives the same term; a kept gradient stays."""
    model = tiny_model()
    groups, train = trainable_parameter_groups(model), mlm_batch("te")
    phi = groups.languages["te"]
    generator = torch.Generator().manual_seed(3)
    vector = {name: torch.randn(p.shape, generator=generator, dtype=p.dtype) for name, p in groups.shared.items()}
    reference = attached_hvp(_lookahead_pass(model, train, groups).attached, phi, vector)
    released = _lookahead_pass(model, train, groups)
    release_values(released.attached)
    assert all(t.untyped_storage().nbytes() == 0 for t in released.attached.values())
    torch.testing.assert_close(flat(attached_hvp(released.attached, phi, vector)), flat(reference), rtol=1e-12, atol=0)
    kept = _lookahead_pass(model, train, groups)
    values = {name: g.clone() for name, g in kept.gradient.items()}
    release_values(kept.attached, keep=kept.gradient)  # single process: the gradient is a view of the attached one
    torch.testing.assert_close(flat(kept.gradient), flat(values), rtol=0, atol=0)


@pytest.mark.parametrize("keep_theta_gradient", [False, True])
def test_meta_objective_runs_without_the_lookahead_gradient_values(monkeypatch, keep_theta_gradient):
    """The step's peak is the meta objective at θ', with the lookahead's graph kept: the attached θ-gradient's
    values are freed before it (SGD lookahead), unless they are θ's gradient for its step (`keep_theta_gradient`)."""
    passes, freed_during_objective = [], []
    real_pass, real_objective = meta.train_gradient, meta.meta_objective_gradients

    def recording_pass(*args, **kwargs):
        passes.append(real_pass(*args, **kwargs))
        return passes[-1]

    def checking_objective(*args, **kwargs):
        freed_during_objective.append(all(t.untyped_storage().nbytes() == 0 for t in passes[-1].attached.values()))
        return real_objective(*args, **kwargs)

    monkeypatch.setattr(meta, "train_gradient", recording_pass)
    monkeypatch.setattr(meta, "meta_objective_gradients", checking_objective)
    model = tiny_model()
    train, vals = mlm_batch("te"), val_batches()
    step = meta_step_gradients(model, [train], vals, "te", lookahead_lr=0.5, method="double_backward",
                               keep_theta_gradient=keep_theta_gradient)
    assert freed_during_objective == [not keep_theta_gradient]
    reference = unrolled_reference(model, train, vals, "te", lookahead_lr=0.5)
    torch.testing.assert_close(flat(step.hypergradient), flat(reference), rtol=1e-9, atol=1e-12)
    if keep_theta_gradient:
        expected = torch.autograd.grad(model(**train).loss, list(trainable_parameter_groups(model).shared.values()))
        torch.testing.assert_close(flat(step.theta_gradient), torch.cat([g.reshape(-1) for g in expected]))
