"""Eq. 4's higher-order term, one strategy per method.

    ∇_{φ_i} M = ∂M/∂φ_i − β · [∇²_{φ_i,θ} L_train^i(θ, φ_i)] · g,      g = ∇_{θ'} M

Every strategy computes [∇²_{φ_i,θ} L_train^i] · v (without −β) over the step's training micro-batches, summed
across processes. They differ in what they ask of the lookahead's pass over the same micro-batches
(`keeps_lookahead_graph`, `needs_phi_gradient_at_theta`) and in how they take the product:

| name (old alias)                        | how                                                   | passes repeated |
|-----------------------------------------|-------------------------------------------------------|-----------------|
| "double_backward" ("exact")             | reverse-over-reverse through the lookahead's own graph | none            |
| "forward_over_reverse"                  | forward-mode AD of ∇_{φ_i} L along v, per micro-batch  | 1 (with tangent)|
| "central_difference" ("finite_difference") | Eq. 8: (∇_{φ_i}L(θ+εv) − ∇_{φ_i}L(θ−εv)) / 2ε        | 2               |
| "forward_difference"                    | Eq. 8 one-sided, base point from the lookahead's pass  | 1               |
| "first_order"                           | dropped (zero)                                         | 0               |

Both exact methods agree with the unrolled graph to float64 precision; the differences are accurate on small
models only (at the paper's size ε·v ≈ 1e-6 per weight drowns in rounding against weights ≈ 1e-2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd import forward_ad

from .passes import AllReduceSum, Batch, TensorDict, add_, all_reduce, grad, model_loss, norm, same_masks, scaled_sum

ALIASES = {"exact": "double_backward", "finite_difference": "central_difference"}  # names of configs before issue 28


@dataclass
class TrainingPass:
    """The step's training micro-batches at (θ, φ_i), and what the lookahead's pass over them left behind:
    `attached`, its θ-gradient with the graph kept (`keeps_lookahead_graph`), `phi_gradient`, ∇_{φ_i} L_train(θ)
    summed across processes (`needs_phi_gradient_at_theta`)."""

    model: nn.Module
    batches: Sequence[Batch]
    shared: Mapping[str, torch.Tensor]
    language_params: Mapping[str, torch.Tensor]
    num_items: torch.Tensor | int
    seeds: Sequence[int]
    all_reduce_sum: AllReduceSum | None = None
    attached: TensorDict | None = None
    phi_gradient: TensorDict | None = None


class HigherOrderTerm:
    """[∇²_{φ_i,θ} L_train^i(θ, φ_i)] · v, summed over micro-batches and processes. Subclasses set `name` and the
    needs below, and implement `__call__`."""

    name = ""
    keeps_lookahead_graph = False  # the lookahead's θ-gradient is taken with create_graph=True and kept
    needs_phi_gradient_at_theta = False  # the lookahead's pass also differentiates w.r.t. φ_i
    differentiates_twice = False  # takes a derivative of a derivative (no torch.compile'd graph can)

    def __call__(self, training: TrainingPass, vector: Mapping[str, torch.Tensor]) -> TensorDict:
        raise NotImplementedError


class FirstOrder(HigherOrderTerm):
    name = "first_order"

    def __call__(self, training, vector):
        return {name: torch.zeros_like(p) for name, p in training.language_params.items()}


class DoubleBackward(HigherOrderTerm):
    """∇_{φ_i} ⟨∇_θ L(θ, φ_i), v⟩ by reverse-over-reverse, differentiating the lookahead's own θ-gradient: the forward
    and first backward pass are not repeated (the fastest exact method). The graph is held from the lookahead to
    here, across the meta objective, for every micro-batch: memory grows with accumulation steps. Without a kept
    graph (`attached` None), it recomputes one micro-batch at a time (`double_backward_hvp`)."""

    name = "double_backward"
    keeps_lookahead_graph = True
    differentiates_twice = True

    def __call__(self, training, vector):
        if training.attached is None:
            local = double_backward_hvp(training.model, training.batches, training.shared, training.language_params,
                                        vector, training.num_items, training.seeds)
        else:
            local = attached_hvp(training.attached, training.language_params, vector)
        return all_reduce(local, training.all_reduce_sum)


class ForwardOverReverse(HigherOrderTerm):
    """θ carries the tangent v (forward-mode AD); the backward pass to φ_i then carries d/dt ∇_{φ_i} L(θ + t v)
    alongside ∇_{φ_i} L. One micro-batch at a time: memory flat in accumulation steps. Accurate under bf16: the
    tangent is its own tensor, never added to the weights."""

    name = "forward_over_reverse"
    differentiates_twice = True

    def __call__(self, training, vector):
        local = forward_over_reverse_hvp(training.model, training.batches, training.shared, training.language_params,
                                         vector, training.num_items, training.seeds)
        return all_reduce(local, training.all_reduce_sum)


class CentralDifference(HigherOrderTerm):
    """Eq. 8 (the paper's, DARTS'): (∇_{φ_i} L(θ + εv) − ∇_{φ_i} L(θ − εv)) / 2ε, ε = fd_epsilon / ‖v‖. Error
    O(ε²)."""

    name = "central_difference"

    def __init__(self, fd_epsilon: float = 0.01):
        self.fd_epsilon = fd_epsilon

    def __call__(self, training, vector):
        return all_reduce(finite_difference_hvp(*_args(training, vector), self.fd_epsilon, central=True),
                          training.all_reduce_sum)


class ForwardDifference(CentralDifference):
    """Eq. 8 one-sided: (∇_{φ_i} L(θ + εv) − ∇_{φ_i} L(θ)) / ε, the base point ∇_{φ_i} L(θ) taken for free in the
    lookahead's backward pass: one probe instead of two, error O(ε)."""

    name = "forward_difference"
    needs_phi_gradient_at_theta = True

    def __call__(self, training, vector):
        if training.phi_gradient is None:
            raise ValueError("forward_difference needs phi_gradient, the φ_i gradient of the training loss at θ")
        plus_over_epsilon = all_reduce(finite_difference_hvp(*_args(training, vector), self.fd_epsilon, central=False),
                                       training.all_reduce_sum)
        inverse_epsilon = norm(vector) / self.fd_epsilon  # 1/ε, as a tensor: no host read
        return {name: plus_over_epsilon[name] - training.phi_gradient[name] * inverse_epsilon.to(g.dtype)
                for name, g in plus_over_epsilon.items()}


METHODS = {cls.name: cls for cls in (DoubleBackward, ForwardOverReverse, CentralDifference, ForwardDifference, FirstOrder)}
HYPERGRADIENT_METHODS = (*METHODS, *ALIASES)  # every accepted `hypergradient` value


def check_method(method: str) -> None:
    if method not in HYPERGRADIENT_METHODS:
        raise ValueError(f"hypergradient method {method!r} is not one of {HYPERGRADIENT_METHODS}")


def canonical_name(method: str) -> str:
    """The name that says what the method does ("exact" → "double_backward", "finite_difference" →
    "central_difference"); configs and checkpoints keep whichever they were written with."""
    check_method(method)
    return ALIASES.get(method, method)


def higher_order_term(method: str, fd_epsilon: float = 0.01) -> HigherOrderTerm:
    """The strategy object for a `hypergradient` setting (old names accepted)."""
    cls = METHODS[canonical_name(method)]
    return cls(fd_epsilon) if issubclass(cls, CentralDifference) else cls()


def _args(training: TrainingPass, vector):
    return (training.model, training.batches, training.shared, training.language_params, vector, training.num_items,
            training.seeds)


# ---------------------------------------------------------------------------------------------- the products
def _tiny(vector: Mapping[str, torch.Tensor]) -> float:
    return torch.finfo(next(iter(vector.values())).dtype).tiny


def forward_over_reverse_hvp(
    model: nn.Module, train_batches: Sequence[Batch], shared: Mapping[str, torch.Tensor],
    language_params: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor],
    train_num_items: torch.Tensor | int, seeds: Sequence[int],
) -> TensorDict:
    """Exact [∇²_{φ_i,θ} L] · v by forward-over-reverse, this process's share. v is scaled to unit norm (the product
    is linear in v) so the tangents sit mid-range in any float format; a zero v gives zero (no host read). Only
    φ_i's gradient is taken. SDPA's math kernel: the CPU flash kernel has no forward-mode derivative."""
    scale = norm(vector).clamp_min(_tiny(vector))
    tangent = {name: v / scale.to(v.dtype) for name, v in vector.items()}
    total = None
    for batch, seed in zip(train_batches, seeds):
        with same_masks(model, seed, batch["input_ids"].device, math_kernel=True), forward_ad.dual_level():
            dual = {name: forward_ad.make_dual(p.detach(), tangent[name]) for name, p in shared.items()}
            grads = grad(model_loss(model, batch, train_num_items, overrides=dual), language_params)
            tangents = {name: _tangent(g) for name, g in grads.items()}
        total = add_(total, tangents)
    return {name: t * scale.to(t.dtype) for name, t in total.items()}


def _tangent(dual: torch.Tensor) -> torch.Tensor:
    tangent = forward_ad.unpack_dual(dual).tangent
    return torch.zeros_like(dual) if tangent is None else tangent.to(dual.dtype)


def double_backward_hvp(
    model: nn.Module, train_batches: Sequence[Batch], shared: Mapping[str, torch.Tensor],
    language_params: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor],
    train_num_items: torch.Tensor | int, seeds: Sequence[int],
) -> TensorDict:
    """Exact [∇²_{φ_i,θ} L] · v = ∇_{φ_i} ⟨∇_θ L(θ, φ_i), v⟩ by double backward, recomputing the forward pass, one
    micro-batch at a time (this process's share). SDPA's math kernel: the CPU flash kernel has no double backward."""
    total = None
    for batch, seed in zip(train_batches, seeds):
        with same_masks(model, seed, batch["input_ids"].device, math_kernel=True):
            theta_grads = grad(model_loss(model, batch, train_num_items, overrides=None), shared, create_graph=True)
        total = add_(total, attached_hvp(theta_grads, language_params, vector))
    return total


def attached_hvp(
    attached: Mapping[str, torch.Tensor], language_params: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor]
) -> TensorDict:
    """Exact [∇²_{φ_i,θ} L] · v = ∇_{φ_i} ⟨∇_θ L(θ, φ_i), v⟩, differentiating the lookahead's own θ-gradient
    (`train_gradient(..., keep_graph=True)`, this process's share) along v: a vector-Jacobian product through its
    graph, which never reads the gradient's values (`release_values` may have freed them)."""
    names = list(attached)
    return grad([attached[n] for n in names], language_params,
                grad_outputs=[vector[n].to(attached[n].dtype) for n in names])


def release_values(attached: Mapping[str, torch.Tensor], keep: Mapping[str, torch.Tensor] | None = None) -> None:
    """Free the values of the lookahead's attached θ-gradient, keeping its graph: once θ' is built only
    `attached_hvp` reads it, through its graph. A θ-sized buffer that would otherwise stay alive across the meta
    objective, the step's peak. Tensors sharing storage with `keep` (the gradient kept for θ's step) are left."""
    kept = {t.untyped_storage().data_ptr() for t in keep.values()} if keep else set()
    for tensor in attached.values():
        if tensor.untyped_storage().data_ptr() not in kept:
            tensor.untyped_storage().resize_(0)


def finite_difference_hvp(
    model: nn.Module, train_batches: Sequence[Batch], shared: Mapping[str, torch.Tensor],
    language_params: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor],
    train_num_items: torch.Tensor | int, seeds: Sequence[int], fd_epsilon: float, central: bool,
) -> TensorDict:
    """Eq. 8, ε = fd_epsilon / ‖v‖, this process's share. central: (∇_{φ_i} L(θ + εv) − ∇_{φ_i} L(θ − εv)) / (2ε);
    otherwise ∇_{φ_i} L(θ + εv) / ε, the caller subtracting ∇_{φ_i} L(θ) / ε. Each probe θ ± εv is built once per
    step (not per micro-batch) and only φ_i is differentiated: θ ± εv are constants. ε stays a tensor (no host
    read); a zero v gives probes at θ and a zero difference."""
    vector_norm = norm(vector).clamp_min(_tiny(vector))
    epsilon = fd_epsilon / vector_norm
    total = None
    for sign in (1.0, -1.0) if central else (1.0,):
        probe = scaled_sum(shared, vector, (sign * epsilon).to(next(iter(vector.values())).dtype))
        weight = sign * vector_norm / (fd_epsilon * (2 if central else 1))  # ± 1/(2ε) or 1/ε
        for batch, seed in zip(train_batches, seeds):
            with same_masks(model, seed, batch["input_ids"].device):
                grads = grad(model_loss(model, batch, train_num_items, overrides=probe), language_params)
            total = add_(total, dict(zip(grads, torch._foreach_mul(list(grads.values()), weight.to(
                next(iter(grads.values())).dtype)))))
        del probe
    return total
