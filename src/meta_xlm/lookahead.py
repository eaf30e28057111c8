"""The lookahead θ' of the meta step (Eq. 3) and the sampled meta objective (Eq. 2/4 at constant cost in L).

Wang, Lipton & Tsvetkov (EMNLP 2020), Section 4.1. With language i sampled and g = ∇_θ L_train^i(θ, φ_i):

    Eq. 3 (paper, "sgd")     θ' = θ − β g
    "optimizer" (AdamW)      θ' = AdamW.step(θ, g) from the optimizer's current state (moments, step, lr, decay)
    Eq. 4, any lookahead     ∇_{φ_i} M = ∂M/∂φ_i |_{θ'}  +  [∇²_{φ_i,θ} L_train^i(θ, φ_i)] · (∂θ'/∂g)ᵀ ∇_{θ'} M

Both lookaheads are elementwise in g, so (∂θ'/∂g)ᵀ v is a diagonal product (`vjp`), and the higher-order term is the
existing mixed Hessian-vector product of `meta.py` applied to `vjp(g, ∇_{θ'} M)` instead of −β ∇_{θ'} M (for "sgd",
vjp(g, v) = −β v gives Eq. 4 exactly). What is held constant: the optimizer state from earlier steps (m, v, step —
the paper's one-step truncation). Within the step, AdamW's Jacobian is exact by default, the second moment's
dependence on g included (`adamw_jacobian_diagonal`); `hold_second_moment=True` drops it (SAMA-style preconditioner
(1 − β₁) / (bias₁ (√v̂ + ε))), measured in tests/test_lookahead.py.

Mixed precision: under bf16 autocast every matmul casts θ' to bf16 (8 significant bits), so βg (~1e-6 relative) is
rounded away and the meta objective sees θ' = θ. `full_precision` runs a forward without autocast and with float32
matmuls at full precision (TF32 on GPUs rounds to 11 bits: the same loss). benchmarks/lookahead_precision.py.

Sampled meta objective: `sample_meta_languages` returns language i plus k − 1 others drawn uniformly without
replacement, with weights that make Σ_j w_j L_val^j an unbiased estimate of M = (1/L) Σ_j L_val^j.

Parameters and optimizer state are never modified; no I/O. The one object with state is
`PreconditionedLookahead`, which holds g from its `step` to its `direction` within one meta step.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from .passes import TensorDict, scaled_sum

LOOKAHEAD_KINDS = ("sgd", "optimizer")


# ----------------------------------------------------------------------------------------------------------------
# Eq. 3: the paper's SGD lookahead
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SGDLookahead:
    """Eq. 3: θ' = θ − β g, β = `lr` (the paper's; Algorithm 1 line 4).

    The lookahead seam of `meta.meta_step_gradients(lookahead=...)`: `step(θ, g) -> θ'`, a `rate` and
    `direction(∇_{θ'} M) -> v` such that (∂θ'/∂g)ᵀ ∇_{θ'} M = −rate · v; by the chain rule Eq. 4 is then
    ∇_{φ_i} M = ∂M/∂φ_i − rate · [∇²_{φ_i,θ} L_train^i] v. For SGD, ∂θ'/∂g = −β I: rate β and v = ∇_{θ'} M, the
    paper's own form. `vjp` is the pure form every lookahead shares (`AdamWLookahead.vjp`)."""

    lr: float
    kind: str = "sgd"
    holds_gradient = False  # `direction` does not read g: the caller may free it once θ' is built

    @property
    def rate(self) -> float:
        return self.lr

    def step(self, theta: Mapping[str, torch.Tensor], gradient: Mapping[str, torch.Tensor]) -> TensorDict:
        """θ' = θ − β g on detached copies (θ is not modified), fused as `torch.optim.SGD` steps."""
        return scaled_sum(theta, gradient, -self.lr)

    def vjp(self, gradient: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor]) -> TensorDict:
        """(∂θ'/∂g)ᵀ v = −β v: the vector of Eq. 4's higher-order term ([∇²_{φ_i,θ} L] · (−β g_M))."""
        return {name: -self.lr * v for name, v in vector.items()}

    def direction(self, outer: TensorDict) -> TensorDict:
        return outer


# ----------------------------------------------------------------------------------------------------------------
# The optimizer's own step: AdamW
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdamWParameterState:
    """One parameter's AdamW state before the step: moments m, v (None: empty state, step 0), the number of steps
    taken, and its group's hyperparameters (lr the current one, after the scheduler)."""

    exp_avg: torch.Tensor | None
    exp_avg_sq: torch.Tensor | None
    step: int
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float

    def moments(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, v), zeros for an empty state (torch initialises both to zeros at the first step)."""
        if self.exp_avg is None or self.exp_avg_sq is None:
            return torch.zeros_like(like), torch.zeros_like(like)
        return self.exp_avg, self.exp_avg_sq


def adamw_parameter_step(theta: torch.Tensor, gradient: torch.Tensor, state: AdamWParameterState) -> torch.Tensor:
    """θ' = θ (1 − lr λ) − lr / b₁ · m' / (√(v' / b₂) + ε), with m' = β₁ m + (1 − β₁) g, v' = β₂ v + (1 − β₂) g²,
    b_k = 1 − β_k^(t+1): `torch.optim.AdamW.step` (single-tensor path, same operations in the same order, so equal
    to it bit for bit on CPU), out of place and differentiable in g."""
    beta1, beta2 = state.betas
    step = state.step + 1
    exp_avg, exp_avg_sq = state.moments(theta)
    decayed = theta.detach() * (1 - state.lr * state.weight_decay) if state.weight_decay else theta.detach()
    exp_avg = torch.lerp(exp_avg, gradient, 1 - beta1)
    exp_avg_sq = exp_avg_sq.mul(beta2).addcmul(gradient, gradient, value=1 - beta2)
    step_size = state.lr / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add(state.eps)
    return torch.addcdiv(decayed, exp_avg, denom, value=-step_size)


def adamw_jacobian_diagonal(
    gradient: torch.Tensor, state: AdamWParameterState, hold_second_moment: bool = False
) -> torch.Tensor:
    """∂θ'/∂g of `adamw_parameter_step`, elementwise (θ'_k depends on g_k only).

    With a = (1 − β₁)/b₁, c = (1 − β₂)/b₂, m̂ = m'/b₁, s = √(v'/b₂), D = s + ε, and θ' = θ(1 − lr λ) − lr m̂ / D:
        exact:               ∂θ'/∂g = −lr [a (β₂ v / b₂ + ε s) − c g β₁ m / b₁] / (s D²)
        hold_second_moment:  ∂θ'/∂g = −lr a / D   (v' treated as a constant, as SAMA does for Adam)
    The exact form is a D − m̂ · c g / s over D², with a s² − c m̂ g expanded so that the g² terms cancel
    symbolically: at the first step (m = v = 0) it is −lr ε / D², which the unexpanded form would get as the
    difference of two ~1/|g| numbers. Computed in float32 at least."""
    beta1, beta2 = state.betas
    step = state.step + 1
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    g = gradient.detach().to(torch.promote_types(gradient.dtype, torch.float32))
    exp_avg, exp_avg_sq = (t.to(g.dtype) for t in state.moments(g))
    a, c = (1 - beta1) / bias1, (1 - beta2) / bias2
    s = (exp_avg_sq.mul(beta2).addcmul(g, g, value=1 - beta2) / bias2).sqrt()
    d = s + state.eps
    if hold_second_moment:
        return (-state.lr * a / d).to(gradient.dtype)
    numerator = a * (beta2 * exp_avg_sq / bias2 + state.eps * s) - c * g * beta1 * exp_avg / bias1
    # s = 0 only where v' = 0, i.e. v = 0 and g = 0; there |g| has no derivative: take the ε term's limit −lr a / D
    jacobian = -state.lr * numerator / (s.clamp_min(torch.finfo(g.dtype).tiny) * d * d)
    return torch.where(s > 0, jacobian, -state.lr * a / d).to(gradient.dtype)


@dataclass(frozen=True)
class AdamWLookahead:
    """θ' = the step θ's AdamW would take from its current state with gradient g ("optimizer" lookahead).

    `states`: per parameter name (`adamw_states`). `hold_second_moment`: the Jacobian's approximation (see
    `adamw_jacobian_diagonal`); False is exact."""

    states: Mapping[str, AdamWParameterState]
    hold_second_moment: bool = False
    kind: str = "optimizer"

    def step(self, theta: Mapping[str, torch.Tensor], gradient: Mapping[str, torch.Tensor]) -> TensorDict:
        """θ' for every parameter of θ, as `AdamW.step` would leave it (θ and the state are not modified)."""
        return {name: adamw_parameter_step(p, gradient[name], self.states[name]) for name, p in theta.items()}

    def vjp(self, gradient: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor]) -> TensorDict:
        """(∂θ'/∂g)ᵀ v = diag(∂θ'/∂g) ⊙ v: the vector of Eq. 4's higher-order term."""
        return {
            name: adamw_jacobian_diagonal(gradient[name], self.states[name], self.hold_second_moment) * v
            for name, v in vector.items()
        }


class PreconditionedLookahead:
    """The seam (`SGDLookahead`'s `step`, `rate`, `direction`) for a lookahead given by `step(θ, g)` and
    `vjp(g, v)`, e.g. θ's own AdamW step (`make_lookahead("optimizer", ...)`).

    (∂θ'/∂g)ᵀ ∇_{θ'} M = vjp(g, ∇_{θ'} M) = −rate · v with rate = 1 and v = −vjp(g, ∇_{θ'} M), so Eq. 4 becomes
    ∇_{φ_i} M = ∂M/∂φ_i + [∇²_{φ_i,θ} L_train^i] (∂θ'/∂g)ᵀ ∇_{θ'} M, and the higher-order share is ‖that term‖ /
    ‖direct‖. g is held from `step` to `direction`: AdamW's Jacobian depends on it (one θ-sized tensor more)."""

    rate = 1.0
    holds_gradient = True  # `direction` reads the g given to `step`

    def __init__(self, inner):
        self.inner = inner
        self.kind = inner.kind
        self._gradient: Mapping[str, torch.Tensor] | None = None

    def step(self, theta: Mapping[str, torch.Tensor], gradient: Mapping[str, torch.Tensor]) -> TensorDict:
        self._gradient = gradient
        return self.inner.step(theta, gradient)

    def direction(self, outer: TensorDict) -> TensorDict:
        if self._gradient is None:
            raise RuntimeError("PreconditionedLookahead.direction needs the g of a step(θ, g) before it")
        vjp, self._gradient = self.inner.vjp(self._gradient, outer), None
        return {name: -v for name, v in vjp.items()}


def _unwrap(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """accelerate's `AcceleratedOptimizer` (and transformers' wrappers) keep the real optimizer in `.optimizer`."""
    inner = getattr(optimizer, "optimizer", None)
    while not isinstance(optimizer, torch.optim.AdamW) and isinstance(inner, torch.optim.Optimizer):
        optimizer, inner = inner, getattr(inner, "optimizer", None)
    return optimizer


def adamw_states(
    optimizer: torch.optim.Optimizer, named_parameters: Mapping[str, torch.Tensor], lr: float | None = None
) -> dict[str, AdamWParameterState]:
    """Each named parameter's state in a real `torch.optim.AdamW` (read, never modified; moments are not copied).

    `lr`: the lookahead's rate (`lookahead_lr`); None: each parameter group's current lr. Raises TypeError for any
    other optimizer class and ValueError for AdamW options whose step this module does not reproduce."""
    inner = _unwrap(optimizer)
    if not isinstance(inner, torch.optim.AdamW):
        raise TypeError(
            f'lookahead="optimizer" reproduces torch.optim.AdamW only; θ\'s optimizer is {type(inner).__qualname__}: '
            'use lookahead="sgd" or optim="adamw_torch"'
        )
    group_of = {id(p): group for group in inner.param_groups for p in group["params"]}
    states = {}
    for name, param in named_parameters.items():
        if id(param) not in group_of:
            raise ValueError(f"parameter {name!r} is not in θ's optimizer, so it has no AdamW state to step from")
        group = group_of[id(param)]
        unsupported = [key for key in ("amsgrad", "maximize") if group.get(key)]
        if unsupported:
            raise ValueError(f"AdamW with {unsupported}=True is not reproduced by the optimizer lookahead")
        state = inner.state.get(param, {})
        step = state.get("step", 0)
        states[name] = AdamWParameterState(
            exp_avg=state.get("exp_avg"), exp_avg_sq=state.get("exp_avg_sq"),
            step=int(step.item() if torch.is_tensor(step) else step),
            lr=float(group["lr"] if lr is None else lr), betas=tuple(float(b) for b in group["betas"]),
            eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
        )
    return states


def make_lookahead(
    kind: str,
    lr: float | None,
    optimizer: torch.optim.Optimizer | None = None,
    named_parameters: Mapping[str, torch.Tensor] | None = None,
    hold_second_moment: bool = False,
) -> SGDLookahead | AdamWLookahead:
    """The lookahead of one meta step (`lookahead`, `lookahead_lr`). "sgd": Eq. 3 at rate `lr` (required: the
    caller passes θ's current learning rate when lookahead_lr is unset). "optimizer": θ's AdamW from its state now,
    at rate `lr`, or each group's current lr when `lr` is None. Build it after θ's scheduler has set the step's lr
    and before θ's optimizer steps."""
    if kind not in LOOKAHEAD_KINDS:
        raise ValueError(f"lookahead {kind!r} is not one of {LOOKAHEAD_KINDS}")
    if kind == "sgd":
        if lr is None:
            raise ValueError('lookahead="sgd" needs its rate β (lookahead_lr, or θ\'s current learning rate)')
        return SGDLookahead(lr)
    if optimizer is None or named_parameters is None:
        raise ValueError('lookahead="optimizer" needs θ\'s optimizer and the named parameters of θ')
    return AdamWLookahead(adamw_states(optimizer, named_parameters, lr=lr), hold_second_moment)


# ----------------------------------------------------------------------------------------------------------------
# Mixed precision
# ----------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """Run the meta objective's forward/backward at θ' in float32: autocast off (it would cast θ' to bf16 per
    matmul and round the shift θ' − θ away) and float32 matmul precision "highest" (TF32's 11 significant bits
    lose it too). The caller's settings are restored. Needs float32 parameters (autocast's master weights)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


def lookahead_share(
    direct_at_lookahead: Mapping[str, torch.Tensor], direct_at_theta: Mapping[str, torch.Tensor]
) -> float:
    """‖∂M/∂φ_i(θ') − ∂M/∂φ_i(θ)‖ / ‖∂M/∂φ_i(θ')‖: how much the lookahead changes the direct term of Eq. 4."""
    shift = _norm({name: direct_at_lookahead[name].double() - at.double() for name, at in direct_at_theta.items()})
    return float(shift / _norm(direct_at_lookahead).clamp_min(torch.finfo(torch.float64).tiny))


def _norm(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.double()) for t in tensors.values()]))


# ----------------------------------------------------------------------------------------------------------------
# The meta objective over k of L languages
# ----------------------------------------------------------------------------------------------------------------
def meta_language_weights(languages: Sequence[str], language: str, others: Collection[str]) -> dict[str, float]:
    """Weights of the estimate M̂ = Σ_{j ∈ S} w_j L_val^j, S = {i} ∪ others, others a uniform (k−1)-subset of the
    L − 1 languages ≠ i: w_i = 1/L, w_j = (L − 1) / ((k − 1) L). Each j ≠ i is in S with probability (k−1)/(L−1),
    so E[M̂] = L_val^i / L + Σ_{j≠i} (k−1)/(L−1) · (L−1)/((k−1) L) · L_val^j = M; ∂M̂/∂φ_i, ∇_{θ'} M̂ and the
    higher-order term are linear in the w_j L_val^j, so they are unbiased too. Keys in `languages` order."""
    num_languages, chosen = len(languages), set(others)
    if language not in languages or language in chosen or not chosen <= set(languages):
        raise ValueError(f"need {language!r} in {list(languages)} and others ⊆ the rest, got others={sorted(chosen)}")
    other_weight = (num_languages - 1) / (len(chosen) * num_languages) if chosen else 0.0
    kept = [code for code in languages if code == language or code in chosen]
    return {code: 1 / num_languages if code == language else other_weight for code in kept}


def _step_generator(seed: int, step: int) -> torch.Generator:
    """A generator from (seed, step) alone (every process draws the same), hashed so that its stream is not the
    language sampler's (`seed * 1_000_003 + epoch` in sampling.py) at any step."""
    digest = hashlib.blake2b(f"meta-languages/{seed}/{step}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def sample_meta_languages(
    languages: Sequence[str], language: str, k: int | None, seed: int, step: int
) -> dict[str, float]:
    """The meta objective's languages and weights at optimizer step `step` (`meta_languages_per_step: k`).

    Language i always, plus k − 1 of the others uniformly without replacement, drawn from (seed, step) only:
    identical on every process and on resume. k None or ≥ L: every language, weight 1/L (the paper's M).
    k = 1 is refused: M̂ = L_val^i / L would drop the other languages, a biased estimate of M."""
    if language not in languages:
        raise ValueError(f"task language {language!r} is not one of the model's languages {list(languages)}")
    num_languages = len(languages)
    if k is None or k >= num_languages:
        return {code: 1 / num_languages for code in languages}
    if k < 2:
        raise ValueError(
            f"meta_languages_per_step must be >= 2 (language i plus at least one other) or null, got {k}: with "
            f"k = 1 the meta objective ignores the other {num_languages - 1} languages"
        )
    rest = [code for code in languages if code != language]
    picked = torch.randperm(len(rest), generator=_step_generator(seed, step))[: k - 1]
    return meta_language_weights(languages, language, [rest[int(index)] for index in picked])


def subset_probability(num_languages: int, k: int) -> float:
    """P(one given set of k − 1 others) = 1 / C(L − 1, k − 1) under `sample_meta_languages`."""
    return 1 / math.comb(num_languages - 1, k - 1)


__all__ = [
    "AdamWLookahead", "AdamWParameterState", "LOOKAHEAD_KINDS", "PreconditionedLookahead", "SGDLookahead",
    "adamw_jacobian_diagonal", "adamw_parameter_step", "adamw_states", "full_precision", "lookahead_share",
    "make_lookahead", "meta_language_weights", "sample_meta_languages", "subset_probability",
]
