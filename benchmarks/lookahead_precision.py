"""How much the lookahead θ' changes the direct term of Eq. 4, and whether bf16 autocast still sees it (issue 27).

For the study's model (2 layers, hidden 128, 4 heads, FFN 512, vocab 2000) and the paper's (8 layers, hidden 512,
8 heads, FFN 2048, vocab 32k), both +adpt with en + sw, random init, dropout off, batches of 4 × 64 tokens, task
language sw. θ's AdamW (lr 1e-3 study, 1e-4 paper, weight decay 0.01) takes one real step on a first batch, so the
"optimizer" lookahead steps from a realistic state (step 1 → 2). For each lookahead ("sgd": θ − βg, β = θ's lr;
"optimizer": θ's AdamW step) and precision, the package's computation of

    Δ = ∂M/∂φ_i(θ') − ∂M/∂φ_i(θ)        (only L_val^i depends on φ_i: M's direct term, up to the factor 1/L)

is compared with the same computation in float64 (model, g, θ', both direct terms):
    share     ‖Δ‖ / ‖∂M/∂φ_i(θ')‖ as computed at that precision (float64: the true share)
    cos Δ     cosine of Δ with float64's Δ (the lookahead's effect, the issue's target ≥ 0.9 in bf16)
    cos direct cosine of ∂M/∂φ_i(θ') with float64's
    ms/pass   one forward + backward of the meta objective on one language's validation batch (median of 3; on
              shared cores this column is noise-dominated: compare within one quiet run only)
Precisions: fp32; bf16 (autocast everywhere, as training runs); bf16+fp32 meta (the lookahead gradient g under
autocast, the meta objective's forward/backward in `lookahead.full_precision`: the mixed-precision treatment).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lookahead_precision.py              # both sizes (~3 min, 2 cores)
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lookahead_precision.py --sizes study  # seconds
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch
from torch.func import functional_call

from common import flat
from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.lookahead import full_precision, lookahead_share, make_lookahead
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM, parameter_groups

SIZES = {  # (layers, hidden, heads, FFN, vocab, θ's learning rate)
    "study": (2, 128, 4, 512, 2000, 1e-3),
    "paper": (8, 512, 8, 2048, 32000, 1e-4),
}
LANGUAGES = ["en", "sw"]
TASK = "sw"
PRECISIONS = ("fp32", "bf16", "bf16+fp32 meta")


def make_batch(language: int, vocab: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(5, vocab, (4, 64), generator=generator)
    masked = torch.rand(4, 64, generator=generator) < 0.15
    masked[:, 1] = True
    return {
        "input_ids": input_ids.masked_fill(masked, 4),
        "attention_mask": torch.ones_like(input_ids),
        "labels": input_ids.masked_fill(~masked, -100),
        "lang_ids": torch.full((4,), language),
    }


def build(size: str) -> tuple[MetaXLMForMaskedLM, torch.optim.AdamW, dict, float]:
    """The model and θ's AdamW after one real step on a first batch (the optimizer lookahead's state)."""
    layers, hidden, heads, ffn, vocab, lr = SIZES[size]
    torch.manual_seed(0)
    config = MetaXLMConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=66, languages=LANGUAGES, language_modules="adapters",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = MetaXLMForMaskedLM(config).train()
    generator = torch.Generator().manual_seed(0)
    batches = {"first": make_batch(1, vocab, generator), "train": make_batch(1, vocab, generator)}
    batches.update({code: make_batch(k, vocab, generator) for k, code in enumerate(LANGUAGES)})
    shared = parameter_groups(model).shared
    optimizer = torch.optim.AdamW(shared.values(), lr=lr, weight_decay=0.01)
    model(**batches["first"]).loss.backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    return model, optimizer, batches, lr


def theta_gradient(model, batch, shared) -> dict[str, torch.Tensor]:
    """g = ∇_θ L_train^i(θ, φ_i) (under whatever autocast the caller set)."""
    grads = torch.autograd.grad(model(**batch).loss, list(shared.values()))
    return {name: grad.detach().to(shared[name].dtype) for name, grad in zip(shared, grads)}


def direct_term(model, batch, theta, phi) -> dict[str, torch.Tensor]:
    """∂L_val^i(θ, φ_i)/∂φ_i with θ substituted by `functional_call` (as meta.py's meta objective does)."""
    loss = functional_call(model, dict(theta), args=(), kwargs=batch, strict=False).loss
    return dict(zip(phi, torch.autograd.grad(loss, list(phi.values()))))


def effect(model, optimizer, batches, lr, kind, train_context, meta_context):
    """(Δ, direct(θ'), direct(θ), seconds per meta pass) with the lookahead of `kind`."""
    groups = parameter_groups(model)
    shared, phi = groups.shared, groups.languages[TASK]
    named_in_optimizer = dict(zip(shared, optimizer.param_groups[0]["params"]))
    with train_context():
        gradient = theta_gradient(model, batches["train"], shared)
    lookahead = make_lookahead(kind, lr, optimizer, named_in_optimizer)
    theta_prime = lookahead.step(shared, gradient)
    seconds = []
    with meta_context():
        at_prime = direct_term(model, batches[TASK], theta_prime, phi)
        for _ in range(3):
            start = time.perf_counter()
            at_theta = direct_term(model, batches[TASK], {n: p.detach() for n, p in shared.items()}, phi)
            seconds.append(time.perf_counter() - start)
    delta = {name: at_prime[name].double() - at_theta[name].double() for name in phi}
    return delta, at_prime, at_theta, statistics.median(seconds)


def float64_copy(model, optimizer):
    """The model and θ's AdamW state in float64 (the reference computation)."""
    model64 = copy.deepcopy(model).double()
    shared64 = parameter_groups(model64).shared
    group = optimizer.param_groups[0]
    optimizer64 = torch.optim.AdamW(shared64.values(), lr=group["lr"], weight_decay=group["weight_decay"])
    for param, param64 in zip(optimizer.param_groups[0]["params"], shared64.values()):
        optimizer64.state[param64] = {k: v.double() if v.is_floating_point() and v.dim() else v.clone()
                                      for k, v in optimizer.state[param].items()}
    return model64, optimizer64


def rows(size: str):
    model, optimizer, batches, lr = build(size)
    model64, optimizer64 = float64_copy(model, optimizer)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    contexts = {
        "fp32": (contextlib.nullcontext, contextlib.nullcontext),
        "bf16": (autocast, autocast),
        "bf16+fp32 meta": (autocast, lambda: _stacked(autocast(), full_precision("cpu"))),
    }
    for kind in ("sgd", "optimizer"):
        reference, at_prime64, _, _ = effect(model64, optimizer64, batches, lr, kind, contextlib.nullcontext,
                                             contextlib.nullcontext)
        true_share = float(flat(reference).norm() / flat(at_prime64).norm())
        yield size, kind, "float64", true_share, 1.0, 1.0, float("nan")
        for precision, (train_context, meta_context) in contexts.items():
            delta, at_prime, at_theta, seconds = effect(
                model, optimizer, batches, lr, kind, train_context, meta_context
            )
            cos_delta = float(torch.nn.functional.cosine_similarity(flat(delta), flat(reference), dim=0))
            cos_direct = float(torch.nn.functional.cosine_similarity(flat(at_prime), flat(at_prime64), dim=0))
            yield size, kind, precision, lookahead_share(at_prime, at_theta), cos_delta, cos_direct, 1e3 * seconds


@contextlib.contextmanager
def _stacked(outer, inner):
    """autocast on (as in training), then the meta objective's own full-precision region inside it."""
    with outer, inner:
        yield


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="study,paper", help=f"comma-separated, of {list(SIZES)}")
    args = parser.parse_args(argv)
    header = f"{'size':<6} {'lookahead':<10} {'precision':<15} {'share':>9} {'cos Δ':>7} {'cos direct':>10}"
    print(f"{header} {'ms/pass':>8}")
    for size in args.sizes.split(","):
        for size_, kind, precision, share, cos_delta, cos_direct, ms in rows(size):
            row = f"{size_:<6} {kind:<10} {precision:<15} {share:>9.2e} {cos_delta:>7.3f} {cos_direct:>10.4f}"
            print(f"{row} {ms:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
