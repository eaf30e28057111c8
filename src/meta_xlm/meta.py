"""The bilevel meta-adapter step of Wang, Lipton & Tsvetkov (EMNLP 2020), Section 4.1 / Algorithm 1.

Shared parameters θ, language-specific parameters φ = {φ_1..φ_L} (`parameter_groups`). With language i sampled:

    Eq. 3   θ' = θ − β ∇_θ L_train^i(θ, φ_i)                         (`lookahead`)
            M  = (1/L) Σ_j L_val^j(θ', φ_j)                          (`meta_objective_gradients`)
    Eq. 4   ∇_{φ_i} M = ∂M/∂φ_i − β [∇²_{φ_i,θ} L_train^i(θ, φ_i)] g,   g = ∇_{θ'} M
    Eq. 8   [∇²_{φ_i,θ} L_train^i] g ≈ (∇_{φ_i} L_train^i(θ + εg) − ∇_{φ_i} L_train^i(θ − εg)) / (2ε),
            ε = fd_epsilon / ‖g‖                                     (`mixed_hessian_vector_product`)

`method` picks the higher-order term: "exact" (the default; below), "forward_over_reverse" (exact, forward-mode AD
of the φ_i gradient along g, recomputed per micro-batch: memory flat in accumulation steps), "finite_difference" (Eq. 8, the paper's choice:
accurate on small models only, see `finite_difference_hvp`), "forward_difference" (Eq. 8 one-sided:
(∇_{φ_i} L(θ + εg) − ∇_{φ_i} L(θ)) / ε, the second gradient taken for free in the lookahead's backward pass — one
probe instead of two, error O(ε) instead of O(ε²)), "exact" (gradient of a gradient, reverse-over-reverse of the
lookahead's own θ-gradient, whose graph is kept across the meta objective: no pass is repeated, the fastest
exact method, the memory of the kept graph) or "first_order" (dropped).

Every function here is pure: parameters are never modified in place (the θ ± εg probes and θ' go through
`torch.func.functional_call`), gradients are taken with `torch.autograd.grad` (`.grad` is never touched), and the
only side channel is `all_reduce_sum`, a callable the caller gives to sum tensors across processes.

Losses: each training micro-batch contributes sum(CE) / `train_num_items` (the label count of the whole
optimizer step, all micro-batches and processes), so micro-batches and processes add up to the mean over one
large batch; each language's validation loss is likewise normalised by its own global label count. Every
process's share is then summed (`all_reduce_sum`), so the gradients and the returned M are the global ones.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd import forward_ad
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .modeling_meta_xlm import ParameterGroups, parameter_groups

HYPERGRADIENT_METHODS = ("exact", "forward_over_reverse", "finite_difference", "forward_difference", "first_order")
# exact by the lookahead's own graph: accurate in bf16 at the paper's size and the fastest exact method
# (benchmarks/meta_step.py); forward_over_reverse holds one micro-batch at a time (memory flat in accumulation)
DEFAULT_HYPERGRADIENT = "exact"

Batch = Mapping[str, torch.Tensor]
TensorDict = dict[str, torch.Tensor]
AllReduceSum = Callable[[torch.Tensor], torch.Tensor]


def check_method(method: str) -> None:
    if method not in HYPERGRADIENT_METHODS:
        raise ValueError(f"hypergradient method {method!r} is not one of {HYPERGRADIENT_METHODS}")


def count_labels(batches: Sequence[Batch]) -> torch.Tensor:
    """Number of predicted positions (labels != -100) over micro-batches: the loss normaliser."""
    return sum(batch["labels"].ne(-100).sum() for batch in batches)


def model_loss(
    model: nn.Module, batch: Batch, num_items: torch.Tensor | int, overrides: Mapping[str, torch.Tensor] | None
) -> torch.Tensor:
    """sum(CE over the batch) / num_items, with the parameters named in `overrides` replaced (tied weights
    follow: `functional_call` ties them) and every other parameter the module's own."""
    inputs = {**batch, "num_items_in_batch": num_items}
    if overrides is None:
        return model(**inputs).loss
    return functional_call(model, dict(overrides), args=(), kwargs=inputs, strict=False).loss


@contextlib.contextmanager
def activation_checkpointing_paused(model: nn.Module) -> Iterator[None]:
    """Run without activation (gradient) checkpointing, then restore it. A checkpointed layer recomputes its
    forward during the backward pass with the module's own parameters, but the lookahead and the θ ± εg probes
    substitute parameters only while `functional_call` runs: recomputing outside it would silently use θ (or
    fail on mismatched shapes). The meta step therefore keeps its activations; the θ step stays checkpointed."""
    flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    for module in flagged:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module in flagged:
            module.gradient_checkpointing = True


def without_activation_checkpointing(function):
    """Decorator: `function(model, ...)` runs inside `activation_checkpointing_paused(model)`."""

    @functools.wraps(function)
    def wrapper(model: nn.Module, *args, **kwargs):
        with activation_checkpointing_paused(model):
            return function(model, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def dropout_seed(seed: int, device: torch.device) -> Iterator[None]:
    """Replay one dropout realisation: passes over the same micro-batch at θ, θ+εg and θ−εg must see the same
    masks, or Eq. 8's difference measures dropout noise. The caller's random stream is left untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield


def _grad(loss: torch.Tensor, params: Mapping[str, torch.Tensor], **kwargs) -> TensorDict:
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True, materialize_grads=True, **kwargs)
    return dict(zip(params, grads))


def _add_(total: TensorDict | None, grads: TensorDict) -> TensorDict:
    if total is None:
        return grads
    for name, grad in grads.items():
        total[name] += grad
    return total


def _all_reduce(grads: TensorDict, all_reduce_sum: AllReduceSum | None) -> TensorDict:
    """Sum a dict of tensors across processes with one collective (flatten, reduce, split)."""
    if all_reduce_sum is None or not grads:
        return grads
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads.values()]))
    sizes = [g.numel() for g in grads.values()]
    return {name: part.view_as(grads[name]) for name, part in zip(grads, flat.split(sizes))}


def _norm(grads: TensorDict) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads.values()]))


def lookahead(shared: Mapping[str, torch.Tensor], train_gradient: Mapping[str, torch.Tensor], lookahead_lr: float) -> TensorDict:
    """Eq. 3: θ' = θ − β ∇_θ L_train^i(θ, φ_i), a plain gradient step on detached copies (θ is not modified)."""
    return {name: param.detach() - lookahead_lr * train_gradient[name] for name, param in shared.items()}


@dataclass
class TrainGradient:
    """∇ L_train^i(θ, φ_i) over the micro-batches of one step. `gradient`: summed over micro-batches and processes,
    detached. `attached`: this process's θ-gradient still attached to its graph (`keep_graph=True`), which the exact
    higher-order term differentiates once more instead of recomputing it."""

    gradient: TensorDict
    loss: torch.Tensor
    attached: TensorDict | None = None


def train_gradient(
    model: nn.Module,
    train_batches: Sequence[Batch],
    wrt: Mapping[str, torch.Tensor],
    train_num_items: torch.Tensor | int,
    seeds: Sequence[int],
    all_reduce_sum: AllReduceSum | None = None,
    keep_graph: bool = False,
) -> TrainGradient:
    """∇ L_train^i(θ, φ_i) w.r.t. the parameters in `wrt` (θ, or θ and φ_i), summed over micro-batches (and
    processes). `keep_graph`: differentiable gradients (create_graph), kept for `attached_hvp`; SDPA's math kernel
    then, as the CPU flash kernel has no double backward."""
    attached, loss_sum = None, 0.0
    for batch, seed in zip(train_batches, seeds):
        kernel = sdpa_kernel(SDPBackend.MATH) if keep_graph else contextlib.nullcontext()
        with dropout_seed(seed, batch["input_ids"].device), kernel:
            loss = model_loss(model, batch, train_num_items, overrides=None)
            grads = _grad(loss, wrt, create_graph=keep_graph)
        # out of place: in-place sums of attached gradients would be recorded in (and lengthen) their graph
        attached = grads if attached is None else {name: attached[name] + g for name, g in grads.items()}
        loss_sum = loss_sum + loss.detach()
    gradient = _all_reduce({name: g.detach() for name, g in attached.items()}, all_reduce_sum)
    return TrainGradient(gradient, loss_sum, attached if keep_graph else None)


def meta_objective_gradients(
    model: nn.Module,
    val_batches: Mapping[str, Batch],
    shared_lookahead: Mapping[str, torch.Tensor],
    language: str,
    language_params: Mapping[str, torch.Tensor],
    val_num_items: Mapping[str, torch.Tensor | int],
    all_reduce_sum: AllReduceSum | None = None,
) -> tuple[TensorDict, TensorDict, torch.Tensor]:
    """M = (1/L) Σ_j L_val^j(θ', φ_j) over the validation batches of ALL languages.

    Returns (g = ∇_{θ'} M, ∂M/∂φ_i at θ' fixed (only L_val^i contains φ_i), M). One language at a time, so the
    peak memory is that of one forward/backward.
    """
    theta = {name: t.requires_grad_(True) for name, t in shared_lookahead.items()}
    num_languages = len(val_batches)
    outer, direct, meta_loss = None, None, 0.0
    for code, batch in val_batches.items():
        loss = model_loss(model, batch, val_num_items[code], overrides=theta) / num_languages
        owns_phi_i = code == language  # batches are single-language: only L_val^i routes through φ_i
        wrt = {**theta, **(language_params if owns_phi_i else {})}
        grads = _grad(loss, wrt)
        outer = _add_(outer, {name: grads[name] for name in theta})
        if owns_phi_i:
            direct = _add_(direct, {name: grads[name] for name in language_params})
        meta_loss = meta_loss + loss.detach()
    if direct is None:
        direct = {name: torch.zeros_like(p) for name, p in language_params.items()}
    # one collective for g, ∂M/∂φ_i and M: each process holds its share (its labels / the global count)
    dtype = next(iter(outer.values())).dtype
    local = {**outer, **{f"direct::{n}": g for n, g in direct.items()}, "meta_loss::": meta_loss.to(dtype)}
    reduced = _all_reduce(local, all_reduce_sum)
    outer = {name: reduced[name] for name in theta}
    direct = {name: reduced[f"direct::{name}"] for name in language_params}
    meta_loss = reduced["meta_loss::"]
    for t in theta.values():
        t.requires_grad_(False)
    return outer, direct, meta_loss


def mixed_hessian_vector_product(
    model: nn.Module,
    train_batches: Sequence[Batch],
    shared: Mapping[str, torch.Tensor],
    language_params: Mapping[str, torch.Tensor],
    vector: Mapping[str, torch.Tensor],
    train_num_items: torch.Tensor | int,
    seeds: Sequence[int],
    method: str,
    fd_epsilon: float = 0.01,
    all_reduce_sum: AllReduceSum | None = None,
    gradient_at_theta: Mapping[str, torch.Tensor] | None = None,
    attached: Mapping[str, torch.Tensor] | None = None,
) -> TensorDict:
    """[∇²_{φ_i,θ} L_train^i(θ, φ_i)] · v (the second term of Eq. 4 without −β), summed over micro-batches and
    processes, by `method` (see `forward_over_reverse_hvp`, `finite_difference_hvp`, `double_backward_hvp`,
    `attached_hvp`; "first_order": zeros). "forward_difference" needs `gradient_at_theta` = ∇_{φ_i} L(θ), summed
    across processes; "exact" differentiates `attached` (the lookahead's θ-gradient with its graph) when given.
    """
    check_method(method)
    if method == "first_order" or float(_norm(vector)) == 0.0:
        return {name: torch.zeros_like(p) for name, p in language_params.items()}
    args = (model, train_batches, shared, language_params, vector, train_num_items, seeds)
    if method == "forward_over_reverse":
        return _all_reduce(forward_over_reverse_hvp(*args), all_reduce_sum)
    if method == "exact":
        local = attached_hvp(attached, language_params, vector) if attached else double_backward_hvp(*args)
        return _all_reduce(local, all_reduce_sum)
    if method == "finite_difference":
        return _all_reduce(finite_difference_hvp(*args, fd_epsilon, central=True), all_reduce_sum)
    if gradient_at_theta is None:
        raise ValueError("forward_difference needs gradient_at_theta, the φ_i gradient of the training loss at θ")
    # Eq. 8 one-sided: (∇_{φ_i} L(θ + εv) − ∇_{φ_i} L(θ)) / ε; the base point is already summed across processes.
    plus_over_epsilon = _all_reduce(finite_difference_hvp(*args, fd_epsilon, central=False), all_reduce_sum)
    epsilon = fd_epsilon / float(_norm(vector))
    return {name: plus_over_epsilon[name] - gradient_at_theta[name] / epsilon for name in language_params}


def forward_over_reverse_hvp(
    model: nn.Module,
    train_batches: Sequence[Batch],
    shared: Mapping[str, torch.Tensor],
    language_params: Mapping[str, torch.Tensor],
    vector: Mapping[str, torch.Tensor],
    train_num_items: torch.Tensor | int,
    seeds: Sequence[int],
) -> TensorDict:
    """Exact [∇²_{φ_i,θ} L] · v by forward-over-reverse: θ carries the tangent v (forward-mode AD), the backward
    pass to φ_i then carries d/dt ∇_{φ_i} L(θ + t v) at t = 0 alongside ∇_{φ_i} L.

    Accurate under bf16 autocast at any model size: the tangent is propagated as its own tensor, never added to
    the weights, so nothing cancels (Eq. 8's θ ± εv probes lose εv ≈ 1e-6 against weights ≈ 1e-2 to rounding).
    v is scaled to unit norm (the product is linear in v) so the tangents sit mid-range in any float format.
    Only φ_i's gradient is taken: no weight gradient of θ is computed. SDPA's math kernel: the CPU flash kernel
    has no forward-mode derivative.
    """
    norm = float(_norm(vector))
    total = None
    for batch, seed in zip(train_batches, seeds):
        with dropout_seed(seed, batch["input_ids"].device), sdpa_kernel(SDPBackend.MATH), forward_ad.dual_level():
            dual = {name: forward_ad.make_dual(p.detach(), vector[name] / norm) for name, p in shared.items()}
            loss = model_loss(model, batch, train_num_items, overrides=dual)
            grads = _grad(loss, language_params)
            tangents = {name: _tangent(grad) for name, grad in grads.items()}
        total = _add_(total, {name: t * norm for name, t in tangents.items()})
    return total


def _tangent(dual: torch.Tensor) -> torch.Tensor:
    tangent = forward_ad.unpack_dual(dual).tangent
    return torch.zeros_like(dual) if tangent is None else tangent.to(dual.dtype)


def double_backward_hvp(
    model: nn.Module,
    train_batches: Sequence[Batch],
    shared: Mapping[str, torch.Tensor],
    language_params: Mapping[str, torch.Tensor],
    vector: Mapping[str, torch.Tensor],
    train_num_items: torch.Tensor | int,
    seeds: Sequence[int],
) -> TensorDict:
    """Exact [∇²_{φ_i,θ} L] · v = ∇_{φ_i} ⟨∇_θ L(θ, φ_i), v⟩ by double backward (reverse-over-reverse; keeps the
    first backward's graph: the memory of about two training steps). SDPA's math kernel: the CPU flash kernel
    has no double backward."""
    total = None
    for batch, seed in zip(train_batches, seeds):
        with dropout_seed(seed, batch["input_ids"].device), sdpa_kernel(SDPBackend.MATH):
            loss = model_loss(model, batch, train_num_items, overrides=None)
            theta_grads = _grad(loss, shared, create_graph=True)
            inner = sum((theta_grads[name] * vector[name]).sum() for name in shared)
        total = _add_(total, _grad(inner, language_params))
    return total


def attached_hvp(
    attached: Mapping[str, torch.Tensor], language_params: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor]
) -> TensorDict:
    """Exact [∇²_{φ_i,θ} L] · v = ∇_{φ_i} ⟨∇_θ L(θ, φ_i), v⟩, differentiating the lookahead's own θ-gradient
    (`train_gradient(..., keep_graph=True)`): the forward and first backward pass are not repeated, which makes
    this the cheapest exact method in time (benchmarks/meta_step.py). The graph is held from the lookahead to
    here, across the meta objective, for every micro-batch of the step: memory grows with accumulation steps."""
    inner = sum((attached[name] * vector[name].to(attached[name].dtype)).sum() for name in attached)
    return _grad(inner, language_params)


def finite_difference_hvp(
    model: nn.Module,
    train_batches: Sequence[Batch],
    shared: Mapping[str, torch.Tensor],
    language_params: Mapping[str, torch.Tensor],
    vector: Mapping[str, torch.Tensor],
    train_num_items: torch.Tensor | int,
    seeds: Sequence[int],
    fd_epsilon: float,
    central: bool,
) -> TensorDict:
    """Eq. 8, ε = fd_epsilon / ‖v‖. central: (∇_{φ_i} L(θ + εv) − ∇_{φ_i} L(θ − εv)) / (2ε) (the paper's, DARTS');
    otherwise ∇_{φ_i} L(θ + εv) / ε, the caller subtracting ∇_{φ_i} L(θ) / ε (one probe fewer, error O(ε)).

    The probes differentiate w.r.t. φ_i only: θ ± εv are constants, so no weight gradient of θ is computed.
    Accurate on small models only: at the paper's size εv ≈ 1e-6 per weight drowns in rounding against weights
    ≈ 1e-2, in float32 as under bf16 autocast (cosine 0.50 with the exact term at fd_epsilon 0.01, 0.86 at 0.1;
    0.99 on a tiny model: benchmarks/meta_step.py --accuracy).
    """
    epsilon = fd_epsilon / float(_norm(vector))
    signs = (1.0, -1.0) if central else (1.0,)
    total = None
    for batch, seed in zip(train_batches, seeds):
        probe_grads = []
        for sign in signs:
            probe = {name: p.detach() + (sign * epsilon) * vector[name] for name, p in shared.items()}
            with dropout_seed(seed, batch["input_ids"].device):
                loss = model_loss(model, batch, train_num_items, overrides=probe)
            probe_grads.append(_grad(loss, language_params))
        scale = 2 * epsilon if central else epsilon
        difference = {name: probe_grads[0][name] - (probe_grads[1][name] if central else 0) for name in language_params}
        total = _add_(total, {name: d / scale for name, d in difference.items()})
    return total


def trainable_parameter_groups(model: nn.Module) -> ParameterGroups:
    """`parameter_groups(model)` without frozen parameters: a frozen θ (e.g. the embeddings, as X-MOD freezes them)
    takes no lookahead step and carries no tangent, a frozen φ_i gets no hypergradient."""
    groups = parameter_groups(model)
    return ParameterGroups(
        shared={name: p for name, p in groups.shared.items() if p.requires_grad},
        languages={code: {n: p for n, p in params.items() if p.requires_grad} for code, params in groups.languages.items()},
    )


def _check_languages(groups: ParameterGroups, language: str, val_batches: Mapping[str, Batch]) -> None:
    if language not in groups.languages or not groups.languages[language]:
        raise ValueError(
            f"language {language!r} has no trainable language-specific parameters in this model "
            f"(languages with parameters: {[c for c, p in groups.languages.items() if p]})"
        )
    missing = [code for code, params in groups.languages.items() if params and code not in val_batches]
    if missing:
        raise ValueError(f"the meta objective needs a validation batch for every language; missing: {missing}")


@dataclass
class MetaStep:
    """The pieces of one meta step: ∇_{φ_i} M = direct − β · higher_order (Eq. 4), and the losses seen.

    `higher_order_ratio` = ‖β · higher_order‖ / ‖direct‖: how much the second-order term moves φ_i."""

    hypergradient: TensorDict
    direct: TensorDict
    higher_order: TensorDict
    train_loss: torch.Tensor
    meta_loss: torch.Tensor
    higher_order_ratio: float


@without_activation_checkpointing
def meta_step_gradients(
    model: nn.Module,
    train_batches: Sequence[Batch],
    val_batches: Mapping[str, Batch],
    language: str,
    *,
    lookahead_lr: float,
    method: str,
    fd_epsilon: float = 0.01,
    train_num_items: torch.Tensor | int | None = None,
    val_num_items: Mapping[str, torch.Tensor | int] | None = None,
    seeds: Sequence[int] | None = None,
    all_reduce_sum: AllReduceSum | None = None,
    groups: ParameterGroups | None = None,
) -> MetaStep:
    """Algorithm 1 lines 3-5 for language i over the micro-batches of one optimizer step (Eqs. 3, 4, 8).

    `train_num_items` / `val_num_items`: label counts over all micro-batches and processes (default: counted
    here, which is right in one process). `seeds`: one dropout seed per micro-batch (default: drawn from torch's
    generator). `all_reduce_sum`: sums a tensor across processes (None in one process). `groups`: the trainable
    θ and φ (default: `trainable_parameter_groups(model)`).
    """
    check_method(method)
    groups = trainable_parameter_groups(model) if groups is None else groups
    _check_languages(groups, language, val_batches)
    shared, language_params = groups.shared, groups.languages[language]
    if train_num_items is None:
        train_num_items = count_labels(train_batches)
    if val_num_items is None:
        val_num_items = {code: count_labels([batch]) for code, batch in val_batches.items()}
    if seeds is None:
        seeds = [int(torch.randint(2**62, ())) for _ in train_batches]

    # forward_difference: the lookahead's backward pass also yields ∇_{φ_i} L_train(θ), its base point;
    # exact: the lookahead's θ-gradient keeps its graph, differentiated once more for the higher-order term.
    wrt = {**shared, **language_params} if method == "forward_difference" else shared
    train = train_gradient(
        model, train_batches, wrt, train_num_items, seeds, all_reduce_sum, keep_graph=method == "exact"
    )
    gradient_at_theta = None
    if method == "forward_difference":
        # cloned: after an all-reduce these are views of one flat buffer the size of θ, freed once g is built
        gradient_at_theta = {name: train.gradient.pop(name).clone() for name in language_params}
    shared_lookahead = lookahead(shared, train.gradient, lookahead_lr)  # Eq. 3
    train.gradient = None
    outer, direct, meta_loss = meta_objective_gradients(
        model, val_batches, shared_lookahead, language, language_params, val_num_items, all_reduce_sum
    )
    del shared_lookahead
    higher_order = mixed_hessian_vector_product(
        model, train_batches, shared, language_params, outer, train_num_items, seeds, method, fd_epsilon,
        all_reduce_sum, gradient_at_theta, train.attached,
    )
    train_loss = train.loss
    del train  # frees the attached graph
    # Eq. 4: ∇_{φ_i} M = ∂M/∂φ_i − β [∇²_{φ_i,θ} L_train^i] g
    hypergradient = {name: direct[name] - lookahead_lr * higher_order[name] for name in language_params}
    ratio = float(lookahead_lr * _norm(higher_order) / _norm(direct).clamp_min(torch.finfo(torch.float32).tiny))
    return MetaStep(hypergradient, direct, higher_order, train_loss, meta_loss, ratio)


def hypergradient(
    model: nn.Module,
    train_batch: Batch,
    val_batches: Mapping[str, Batch],
    language: str,
    *,
    lookahead_lr: float,
    method: str,
    fd_epsilon: float = 0.01,
) -> TensorDict:
    """∇_{φ_i} M for one training batch of `language` (Eq. 4), keyed by parameter name — compare the
    "finite_difference", "forward_difference", "exact" and "first_order" methods on any MetaXLM model.
    Parameters are not modified."""
    return meta_step_gradients(
        model, [train_batch], val_batches, language, lookahead_lr=lookahead_lr, method=method, fd_epsilon=fd_epsilon
    ).hypergradient
