"""The lookahead of the meta step (lookahead.py, issue 27): AdamW's own step as θ', its Jacobian in the higher-order
term of Eq. 4, the sampled meta objective's unbiasedness, and θ' ≠ θ surviving bf16 autocast at a realistic width."""

import contextlib
import copy
import itertools

import pytest
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.lookahead import (
    SGDLookahead, adamw_jacobian_diagonal, adamw_parameter_step, full_precision, lookahead_share, make_lookahead,
    meta_language_weights, sample_meta_languages, subset_probability,
)
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM, parameter_groups

LANGUAGES = ["en", "te", "pt", "sw"]


def tiny_model(dtype=torch.float64) -> MetaXLMForMaskedLM:
    config = MetaXLMConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, languages=LANGUAGES, language_modules="adapters",
    )
    torch.manual_seed(0)
    model = MetaXLMForMaskedLM(config).to(dtype)
    with torch.no_grad():  # random adapters: non-trivial φ_i gradients and second-order terms
        for params in parameter_groups(model).languages.values():
            for p in params.values():
                p.normal_(0.0, 0.05)
    return model


def mlm_batch(language: str, seed: int, vocab: int = 99, size: int = 5, length: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (size, length), generator=generator)
    labels = torch.where(torch.rand(size, length, generator=generator) < 0.4, input_ids, -100)
    labels[:, 0] = input_ids[:, 0]
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
            "lang_ids": torch.full((size,), LANGUAGES.index(language))}


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.double().reshape(-1) for t in tensors.values()])


def cosine(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(flat(a), flat(b), dim=0))


def trained_adamw(model, steps: int, lr: float = 1e-2, weight_decay: float = 0.01):
    """θ's AdamW (two groups, as the Trainer builds them: decay and no decay) after `steps` real steps."""
    shared = parameter_groups(model).shared
    decay = [p for n, p in shared.items() if not n.endswith("bias")]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": [p for p in shared.values() if not any(p is q for q in decay)],
                                    "weight_decay": 0.0}], lr=lr)
    for step in range(steps):
        model(**mlm_batch(LANGUAGES[step % 4], seed=50 + step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return optimizer


# ----------------------------------------------------------------------------------------------------------------
# θ' = AdamW.step
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps_taken", [0, 3])
@pytest.mark.parametrize("lookahead_lr", [None, 3e-3])
def test_optimizer_lookahead_equals_a_real_adamw_step(steps_taken, lookahead_lr):
    model = tiny_model(torch.float32)
    optimizer = trained_adamw(model, steps_taken)
    for group in optimizer.param_groups:
        group["lr"] = 7e-3  # as a scheduler leaves it: the lookahead must read the current lr
    shared = parameter_groups(model).shared
    generator = torch.Generator().manual_seed(1)
    gradient = {n: torch.randn(p.shape, generator=generator) * 1e-2 for n, p in shared.items()}
    theta_prime = make_lookahead("optimizer", lookahead_lr, optimizer, shared).step(shared, gradient)

    stepped_model, stepped = copy.deepcopy((model, optimizer))  # one deepcopy: the copy's state keys its params
    if lookahead_lr is not None:
        for group in stepped.param_groups:
            group["lr"] = lookahead_lr
    for name, param in parameter_groups(stepped_model).shared.items():
        param.grad = gradient[name].clone()
    stepped.step()
    for name, param in parameter_groups(stepped_model).shared.items():
        assert torch.equal(theta_prime[name], param.detach()), (name, (theta_prime[name] - param).abs().max())
    # θ and the optimizer's state are left alone
    assert all(torch.equal(p, q) for p, q in zip(shared.values(), parameter_groups(model).shared.values()))
    assert all(int(s["step"]) == steps_taken for s in optimizer.state.values()) and len(optimizer.state) == (
        len(shared) if steps_taken else 0)


def test_optimizer_lookahead_refuses_other_optimizers_by_name():
    model = tiny_model(torch.float32)
    shared = parameter_groups(model).shared
    with pytest.raises(TypeError, match="SGD"):
        make_lookahead("optimizer", None, torch.optim.SGD(shared.values(), lr=0.1), shared)
    with pytest.raises(ValueError, match="amsgrad"):
        make_lookahead("optimizer", None, torch.optim.AdamW(shared.values(), amsgrad=True), shared)
    with pytest.raises(ValueError, match="'adam'"):
        make_lookahead("adam", 1e-3)


@pytest.mark.parametrize("steps_taken", [0, 3])
def test_adamw_jacobian_matches_autograd_through_the_step(steps_taken):
    """The closed form (g² terms cancelled symbolically) against autograd through `adamw_parameter_step`. Float64:
    autograd's own form loses ~|g|/ε · 1e-16 relative at step 0 (its two ~1/|g| terms cancel to ε/D²)."""
    model = tiny_model()
    optimizer = trained_adamw(model, steps_taken)
    shared = parameter_groups(model).shared
    lookahead = make_lookahead("optimizer", None, optimizer, shared)
    generator = torch.Generator().manual_seed(2)
    for name, param in shared.items():
        g = (torch.randn(param.shape, generator=generator, dtype=torch.float64) * 1e-3).requires_grad_(True)
        (reference,) = torch.autograd.grad(adamw_parameter_step(param, g, lookahead.states[name]).sum(), g)
        closed_form = adamw_jacobian_diagonal(g, lookahead.states[name])
        assert float((closed_form - reference).abs().max() / reference.abs().max()) < 1e-8, name


# ----------------------------------------------------------------------------------------------------------------
# The hypergradient through a lookahead: full autograd, and the way the meta step composes it
# ----------------------------------------------------------------------------------------------------------------
def unrolled_hypergradient(model, train, vals, weights, language, lookahead):
    """(M̂, d M̂/dφ_i) of M̂ = Σ_j w_j L_val^j(θ'(g(φ_i)), φ_j) by autograd through the whole unrolled graph,
    the lookahead's step included.

    Coordinates with g = 0 exactly (embedding rows of tokens absent from the batch) enter the step as constants:
    there g ≡ 0 whatever φ_i, and at v = 0 autograd through √v' gives 0 · ∞ = NaN."""
    groups = parameter_groups(model)
    shared, phi = groups.shared, groups.languages[language]
    with sdpa_kernel(SDPBackend.MATH):
        gradient = torch.autograd.grad(model(**train).loss, list(shared.values()), create_graph=True)
        gradient = {name: torch.where(g != 0, g, g.detach()) for name, g in zip(shared, gradient)}
        theta_prime = lookahead.step(shared, gradient)
        meta = sum(w * functional_call(model, theta_prime, args=(), kwargs=vals[c], strict=False).loss
                   for c, w in weights.items())
        return meta.detach(), dict(zip(phi, torch.autograd.grad(meta, list(phi.values()))))


def composed_hypergradient(model, train, vals, weights, language, lookahead):
    """(direct, higher-order) as the meta step computes them: ∂M̂/∂φ_i at θ' fixed, plus
    [∇²_{φ_i,θ} L_train^i] · vjp(g, ∇_{θ'} M̂) by double backward of the lookahead's own θ-gradient."""
    groups = parameter_groups(model)
    shared, phi = groups.shared, groups.languages[language]
    with sdpa_kernel(SDPBackend.MATH):
        attached = torch.autograd.grad(model(**train).loss, list(shared.values()), create_graph=True)
        gradient = {name: g.detach() for name, g in zip(shared, attached)}
        theta_prime = {n: t.requires_grad_(True) for n, t in lookahead.step(shared, gradient).items()}
        meta = sum(w * functional_call(model, theta_prime, args=(), kwargs=vals[c], strict=False).loss
                   for c, w in weights.items())
        grads = torch.autograd.grad(meta, [*theta_prime.values(), *phi.values()])
        outer, direct = dict(zip(theta_prime, grads)), dict(zip(phi, grads[len(theta_prime):]))
        vector = lookahead.vjp(gradient, outer)
        inner = sum((g * vector[name]).sum() for name, g in zip(shared, attached))
        higher = dict(zip(phi, torch.autograd.grad(inner, list(phi.values()))))
    return direct, higher


@pytest.mark.parametrize("kind, steps_taken", [("sgd", 0), ("optimizer", 0), ("optimizer", 3)])
def test_higher_order_term_through_the_lookahead_matches_autograd(kind, steps_taken):
    model = tiny_model()
    optimizer = trained_adamw(model, steps_taken)
    lookahead = make_lookahead(kind, 0.5 if kind == "sgd" else None, optimizer, parameter_groups(model).shared)
    train, vals = mlm_batch("te", seed=0), {c: mlm_batch(c, seed=10 + k) for k, c in enumerate(LANGUAGES)}
    weights = {code: 1 / len(LANGUAGES) for code in LANGUAGES}
    _, reference = unrolled_hypergradient(model, train, vals, weights, "te", lookahead)
    direct, higher = composed_hypergradient(model, train, vals, weights, "te", lookahead)
    assert flat(higher).norm() > 1e-3 * flat(direct).norm()  # the term under test is not negligible here
    combined = {name: direct[name] + higher[name] for name in direct}
    torch.testing.assert_close(flat(combined), flat(reference), rtol=1e-9, atol=1e-14)


# ----------------------------------------------------------------------------------------------------------------
# The sampled meta objective: language i plus k − 1 others
# ----------------------------------------------------------------------------------------------------------------
def test_sampled_meta_objective_is_exactly_unbiased_for_m_and_the_hypergradient():
    """L = 4, k = 2: the average over the 3 possible subsets (each with probability 1/3) of M̂ and of its
    hypergradient through the AdamW lookahead equals the all-language M and hypergradient (float64)."""
    model = tiny_model()
    optimizer = trained_adamw(model, 2)
    lookahead = make_lookahead("optimizer", None, optimizer, parameter_groups(model).shared)
    train, vals = mlm_batch("pt", seed=0), {c: mlm_batch(c, seed=20 + k) for k, c in enumerate(LANGUAGES)}
    full_m, full_grad = unrolled_hypergradient(model, train, vals, meta_language_weights(LANGUAGES, "pt", [
        c for c in LANGUAGES if c != "pt"]), "pt", lookahead)
    others, k = [c for c in LANGUAGES if c != "pt"], 2
    mean_m, mean_grad, estimates = 0.0, 0.0, []
    for subset in itertools.combinations(others, k - 1):
        probability = subset_probability(len(LANGUAGES), k)
        m, grad = unrolled_hypergradient(model, train, vals, meta_language_weights(LANGUAGES, "pt", subset), "pt",
                                         lookahead)
        mean_m, mean_grad = mean_m + probability * m, mean_grad + probability * flat(grad)
        estimates.append(float(m))
    assert max(estimates) - min(estimates) > 1e-3  # the subsets' estimates differ: the average is a real test
    assert abs(float(mean_m - full_m)) < 1e-10
    torch.testing.assert_close(mean_grad, flat(full_grad), rtol=0, atol=1e-10)


def test_sample_meta_languages_is_seeded_uniform_and_keeps_the_task_language():
    draws = [sample_meta_languages(LANGUAGES, "te", 3, seed=42, step=step) for step in range(900)]
    assert draws[:10] == [sample_meta_languages(LANGUAGES, "te", 3, seed=42, step=step) for step in range(10)]
    assert draws[:10] != [sample_meta_languages(LANGUAGES, "te", 3, seed=43, step=step) for step in range(10)]
    for weights in draws:
        assert list(weights) == [c for c in LANGUAGES if c in weights]  # the model's language order
        assert len(weights) == 3 and weights["te"] == 1 / 4
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-15)  # w_i + (k−1)(L−1)/((k−1)L) = 1
    counts = {}
    for weights in draws:
        key = tuple(sorted(c for c in weights if c != "te"))
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 3 and all(abs(n / 900 - 1 / 3) < 0.06 for n in counts.values()), counts


def test_sample_meta_languages_keeps_every_language_or_refuses_k_1():
    assert sample_meta_languages(LANGUAGES, "en", None, seed=0, step=5) == {c: 0.25 for c in LANGUAGES}
    assert sample_meta_languages(LANGUAGES, "en", 7, seed=0, step=5) == {c: 0.25 for c in LANGUAGES}
    with pytest.raises(ValueError, match="got 1"):
        sample_meta_languages(LANGUAGES, "en", 1, seed=0, step=5)
    with pytest.raises(ValueError, match="'xx'"):
        sample_meta_languages(LANGUAGES, "xx", 2, seed=0, step=5)


# ----------------------------------------------------------------------------------------------------------------
# Mixed precision at a realistic width
# ----------------------------------------------------------------------------------------------------------------
def direct_effect(model, batches, kind, optimizer, lr, train_autocast, meta_context):
    """Δ = ∂L_val^i/∂φ_i(θ') − ∂L_val^i/∂φ_i(θ) and direct(θ'), as computed in the given precision contexts."""
    groups = parameter_groups(model)
    shared, phi = groups.shared, groups.languages["te"]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=train_autocast):
        grads = torch.autograd.grad(model(**batches["train"]).loss, list(shared.values()))
    gradient = {name: g.to(model.dtype) for name, g in zip(shared, grads)}
    optimized = dict(zip(shared, itertools.chain.from_iterable(g["params"] for g in optimizer.param_groups)))
    theta_prime = make_lookahead(kind, lr, optimizer, optimized).step(shared, gradient)
    direct = {}
    with meta_context():
        for label, theta in (("prime", theta_prime), ("theta", {n: p.detach() for n, p in shared.items()})):
            loss = functional_call(model, theta, args=(), kwargs=batches["val"], strict=False).loss
            direct[label] = dict(zip(phi, torch.autograd.grad(loss, list(phi.values()))))
    return {n: direct["prime"][n].double() - direct["theta"][n].double() for n in phi}, direct["prime"], direct["theta"]


@contextlib.contextmanager
def autocast_then_full_precision():
    """Training's bf16 autocast, and inside it the meta objective's own `full_precision` region."""
    with torch.autocast("cpu", dtype=torch.bfloat16), full_precision("cpu"):
        yield


@pytest.mark.parametrize("kind", ["sgd", "optimizer"])
def test_lookahead_effect_survives_bf16_autocast_at_realistic_width(kind):
    """24M parameters (the paper's width and vocabulary, 2 of its 8 layers), AdamW state after one real step,
    lr 1e-4: the lookahead's effect on the direct term under bf16 autocast with the meta objective in
    `full_precision`, against float64 (measured: 1.000 sgd, 0.999 optimizer). Plain bf16 autocast rounds θ' to
    θ's bf16 value (measured: 0.003 sgd; 0.96 optimizer, whose shift ~lr per weight is near bf16's resolution)."""
    torch.manual_seed(0)
    config = MetaXLMConfig(
        vocab_size=32000, hidden_size=512, num_hidden_layers=2, num_attention_heads=8, intermediate_size=2048,
        max_position_embeddings=34, languages=["en", "te"], language_modules="adapters",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = MetaXLMForMaskedLM(config).train()
    assert sum(p.numel() for p in model.parameters()) >= 20_000_000
    batches = {"first": mlm_batch("te", 0, 32000, 2, 32), "train": mlm_batch("te", 1, 32000, 2, 32),
               "val": mlm_batch("te", 2, 32000, 2, 32)}
    optimizer = torch.optim.AdamW(parameter_groups(model).shared.values(), lr=1e-4, weight_decay=0.01)
    model(**batches["first"]).loss.backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    model64 = copy.deepcopy(model).double()
    optimizer64 = torch.optim.AdamW(parameter_groups(model64).shared.values(), lr=1e-4, weight_decay=0.01)
    for p, p64 in zip(optimizer.param_groups[0]["params"], optimizer64.param_groups[0]["params"]):
        optimizer64.state[p64] = {k: v.double() if v.dim() else v.clone() for k, v in optimizer.state[p].items()}

    reference, at_prime64, _ = direct_effect(model64, batches, kind, optimizer64, 1e-4, False, contextlib.nullcontext)
    treated, at_prime, at_theta = direct_effect(
        model, batches, kind, optimizer, 1e-4, True, autocast_then_full_precision
    )
    assert cosine(treated, reference) >= 0.9, cosine(treated, reference)
    if kind == "sgd":  # control: plain autocast loses βg here (measured cosine 0.003), so the check above has teeth
        plain, _, _ = direct_effect(model, batches, kind, optimizer, 1e-4, True,
                                    lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        assert cosine(plain, reference) < 0.5, cosine(plain, reference)
    true_share = float(flat(reference).norm() / flat(at_prime64).norm())
    assert lookahead_share(at_prime, at_theta) == pytest.approx(true_share, rel=0.1)


# ----------------------------------------------------------------------------------------------------------------
# The same unbiasedness through the wired meta step (issue 27, phase 2)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sgd", "optimizer"])
def test_wired_meta_step_with_sampled_languages_is_exactly_unbiased(kind):
    """L = 4, k = 2 through the package's own meta step: the trainer's objective (`steps.sampled_languages`) draws
    each of the 3 subsets (enumerated over steps), `meta.meta_step_gradients` computes M̂ and ∇_{φ_i} M̂ (double
    backward, the lookahead as the trainer builds it); their probability-weighted average equals the all-language
    M and hypergradient (float64)."""
    from meta_xlm.meta import PreconditionedLookahead, SGDLookahead as PaperLookahead, meta_step_gradients
    from meta_xlm.steps import sampled_languages

    model = tiny_model()
    optimizer = trained_adamw(model, 2)
    shared = parameter_groups(model).shared
    train, vals = mlm_batch("pt", seed=0), {c: mlm_batch(c, seed=20 + k) for k, c in enumerate(LANGUAGES)}

    def meta_step(weights):
        lookahead = PaperLookahead(0.3) if kind == "sgd" else PreconditionedLookahead(
            make_lookahead("optimizer", None, optimizer, shared))
        return meta_step_gradients(model, [train], vals, "pt", lookahead_lr=lookahead.rate, method="double_backward",
                                   lookahead=lookahead, meta_weights=weights, seeds=[0])

    full = meta_step(None)  # the paper's M: every language, 1/L
    objective = sampled_languages(2, seed=11)
    subsets = {tuple(weights): weights for weights in (objective(LANGUAGES, "pt", step) for step in range(40))}
    assert len(subsets) == 3  # {pt, j} for each j ≠ pt
    mean_m, mean_grad, estimates = 0.0, 0.0, []
    for weights in subsets.values():
        estimate = meta_step(weights)
        mean_m = mean_m + subset_probability(len(LANGUAGES), 2) * estimate.meta_loss
        mean_grad = mean_grad + subset_probability(len(LANGUAGES), 2) * flat(estimate.hypergradient)
        estimates.append(flat(estimate.hypergradient))
    assert float(full.higher_order_share) > 1e-3  # the higher-order term is part of what is averaged
    assert max(float((e - flat(full.hypergradient)).norm()) for e in estimates) > 1e-4  # subsets differ: a real test
    assert abs(float(mean_m - full.meta_loss)) < 1e-10
    torch.testing.assert_close(mean_grad, flat(full.hypergradient), rtol=0, atol=1e-10)
