"""The bilevel meta-adapter step of Wang, Lipton & Tsvetkov (EMNLP 2020), Section 4.1 / Algorithm 1.

Shared parameters θ, language-specific parameters φ = {φ_1..φ_L} (`parameter_groups`). With language i sampled,
`meta_step_gradients` reads in the order of the algorithm:

    ∇_θ L_train^i(θ, φ_i)                                            (`train_gradient`, the lookahead's pass)
    Eq. 3   θ' = θ − β ∇_θ L_train^i(θ, φ_i)                         (`SGDLookahead.step`)
            M  = Σ_j w_j L_val^j(θ', φ_j),  w_j = 1/L                (`meta_objective_gradients`, `uniform_meta_objective`)
    Eq. 4   ∇_{φ_i} M = ∂M/∂φ_i − β [∇²_{φ_i,θ} L_train^i(θ, φ_i)] g,   g = ∇_{θ'} M
                                                                     (one `hypergradients.HigherOrderTerm` per method)

Two pieces are replaceable, each one argument of `meta_step_gradients`: the lookahead (`lookahead=`: an object
mapping (θ, g) to θ' and ∇_{θ'} M to the direction of the higher-order term: `meta_xlm.lookahead`'s
`SGDLookahead` by default, or `PreconditionedLookahead` around θ's own AdamW step) and the
meta objective's languages and weights (`meta_weights=`: {language: w_j}, `uniform_meta_objective` by default).

Every function here is pure: parameters are never modified in place (θ' and the θ ± εg probes go through
`torch.func.functional_call`), gradients are taken with `torch.autograd.grad` (`.grad` is never touched), and the
only side channel is `all_reduce_sum`, a callable the caller gives to sum tensors across processes.

Losses: each training micro-batch contributes sum(CE) / `train_num_items` (the label count of the whole
optimizer step, all micro-batches and processes), so micro-batches and processes add up to the mean over one
large batch; each language's validation loss is likewise normalised by its own global label count. Every
process's share is then summed (`all_reduce_sum`), so the gradients and the returned M are the global ones.

Dropout: every pass over one training micro-batch (the lookahead's, the higher-order term's, the trainer's θ step)
runs under that micro-batch's seed and one SDPA kernel (`passes.same_masks`), so all see the same masks.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .hypergradients import (
    HYPERGRADIENT_METHODS, HigherOrderTerm, TrainingPass, attached_hvp, canonical_name, check_method,
    double_backward_hvp, finite_difference_hvp, forward_over_reverse_hvp, higher_order_term, release_values,
)
from .lookahead import PreconditionedLookahead, SGDLookahead, lookahead_share
from .modeling_meta_xlm import ParameterGroups, parameter_groups
from .passes import (
    AllReduceSum, Batch, TensorDict, all_reduce, count_labels, dropout_seed, grad, model_loss, norm, same_masks,
)

# exact, by differentiating the lookahead's own graph: accurate in bf16 at the paper's size and the fastest exact
# method (benchmarks/meta_step.py); forward_over_reverse holds one micro-batch at a time (memory flat in accumulation)
DEFAULT_HYPERGRADIENT = "double_backward"


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


# ---------------------------------------------------------------------------------------------- Eq. 3
def lookahead(shared: Mapping[str, torch.Tensor], train_gradient: Mapping[str, torch.Tensor], lookahead_lr: float) -> TensorDict:
    """Eq. 3: θ' = θ − β ∇_θ L_train^i(θ, φ_i), a plain gradient step on detached copies (θ is not modified)."""
    return SGDLookahead(lookahead_lr).step(shared, train_gradient)


def uniform_meta_objective(languages: Sequence[str]) -> dict[str, float]:
    """The meta objective's languages and weights: M = (1/L) Σ_j L_val^j, every language j with its weight 1/L (Eq. 2).

    The meta-objective seam: `meta_step_gradients(meta_weights=...)` takes any {language: w_j}, e.g. k sampled
    languages with weights that keep M unbiased."""
    return {code: 1.0 / len(languages) for code in languages}


# ---------------------------------------------------------------------------------------------- the passes
@dataclass
class TrainGradient:
    """∇ L_train^i(θ, φ_i) over the micro-batches of one step. `gradient`: summed over micro-batches and processes,
    detached. `losses`: this process's loss share per micro-batch. `attached`: this process's θ-gradient still
    attached to its graph (`keep_graph=True`), which the double-backward term differentiates once more (through its
    graph only: `meta_step_gradients` frees its values once θ' is built, `release_values`)."""

    gradient: TensorDict
    losses: list[torch.Tensor]
    attached: TensorDict | None = None

    @property
    def loss(self) -> torch.Tensor:
        return torch.stack(self.losses).sum()


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
    total, losses = None, []
    for batch, seed in zip(train_batches, seeds):
        with same_masks(model, seed, batch["input_ids"].device, math_kernel=keep_graph):
            loss = model_loss(model, batch, train_num_items, overrides=None)
            grads = grad(loss, wrt, create_graph=keep_graph)
        if keep_graph and total is not None:
            # out of place: in-place sums of attached gradients would be recorded in (and lengthen) their graph
            total = {name: total[name] + g for name, g in grads.items()}
        else:
            total = grads if total is None else _add_in_place(total, grads)
        losses.append(loss.detach())
    gradient = all_reduce({name: g.detach() for name, g in total.items()}, all_reduce_sum)
    return TrainGradient(gradient, losses, total if keep_graph else None)


def _add_in_place(total: TensorDict, grads: TensorDict) -> TensorDict:
    torch._foreach_add_(list(total.values()), [grads[name] for name in total])
    return total


def meta_objective_gradients(
    model: nn.Module,
    val_batches: Mapping[str, Batch],
    shared_lookahead: Mapping[str, torch.Tensor],
    language: str,
    language_params: Mapping[str, torch.Tensor],
    val_num_items: Mapping[str, torch.Tensor | int],
    all_reduce_sum: AllReduceSum | None = None,
    weights: Mapping[str, float] | None = None,
    seeds: Mapping[str, int] | None = None,
) -> tuple[TensorDict, TensorDict, torch.Tensor]:
    """M = Σ_j w_j L_val^j(θ', φ_j) over the languages of `weights` (default: every batch of `val_batches`, w_j = 1/L).

    Returns (g = ∇_{θ'} M, ∂M/∂φ_i at θ' fixed (only L_val^i contains φ_i), M). One language at a time, so the
    peak memory is that of one forward/backward. `seeds`: a dropout seed per language (None: torch's stream)."""
    weights = uniform_meta_objective(list(val_batches)) if weights is None else weights
    # Leaves of their own for θ' and φ_i (copies: the parameters' `.grad` stays untouched); each language's backward
    # accumulates into their `.grad` parameter by parameter, so no second θ-sized gradient is alive at once.
    theta = {name: t.detach().requires_grad_(True) for name, t in shared_lookahead.items()}
    phi = {name: p.detach().requires_grad_(True) for name, p in language_params.items()}
    meta_loss = 0.0
    for code, weight in weights.items():
        batch = val_batches[code]
        leaves = {**theta, **(phi if code == language else {})}  # single-language batches: only L_val^i has φ_i
        masks = same_masks(model, seeds[code], batch["input_ids"].device) if seeds else contextlib.nullcontext()
        with masks:
            loss = model_loss(model, batch, val_num_items[code], overrides=leaves) * weight
            torch.autograd.backward(loss, inputs=list(leaves.values()))
        meta_loss = meta_loss + loss.detach()
    outer = {name: _grad_or_zeros(t) for name, t in theta.items()}
    direct = {name: _grad_or_zeros(p) for name, p in phi.items()}
    # one collective for g, ∂M/∂φ_i and M: each process holds its share (its labels / the global count)
    dtype = next(iter(outer.values())).dtype
    local = {**outer, **{f"direct::{n}": g for n, g in direct.items()}, "meta_loss::": meta_loss.to(dtype)}
    reduced = all_reduce(local, all_reduce_sum)
    return ({name: reduced[name] for name in theta}, {name: reduced[f"direct::{name}"] for name in language_params},
            reduced["meta_loss::"])


def _grad_or_zeros(leaf: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(leaf) if leaf.grad is None else leaf.grad


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
    processes, by `method` (`hypergradients.higher_order_term`). "forward_difference" needs `gradient_at_theta` =
    ∇_{φ_i} L(θ), summed across processes; "double_backward" differentiates `attached` (the lookahead's θ-gradient
    with its graph) when given, else recomputes it."""
    training = TrainingPass(model, train_batches, shared, language_params, train_num_items, seeds, all_reduce_sum,
                            attached=attached, phi_gradient=gradient_at_theta)
    return higher_order_term(method, fd_epsilon)(training, vector)


def trainable_parameter_groups(model: nn.Module) -> ParameterGroups:
    """`parameter_groups(model)` without frozen parameters: a frozen θ (e.g. the embeddings, as X-MOD freezes them)
    takes no lookahead step and carries no tangent, a frozen φ_i gets no hypergradient."""
    groups = parameter_groups(model)
    return ParameterGroups(
        shared={name: p for name, p in groups.shared.items() if p.requires_grad},
        languages={code: {n: p for n, p in params.items() if p.requires_grad} for code, params in groups.languages.items()},
    )


def _checked_meta_weights(groups: ParameterGroups, language: str, meta_weights: Mapping[str, float] | None,
                          val_batches: Mapping[str, Batch]) -> Mapping[str, float]:
    """The meta objective's weights (default: uniform over every language with trainable φ), once language i has
    trainable φ_i and every weighted language a validation batch."""
    if language not in groups.languages or not groups.languages[language]:
        raise ValueError(
            f"language {language!r} has no trainable language-specific parameters in this model "
            f"(languages with parameters: {[c for c, p in groups.languages.items() if p]})"
        )
    if meta_weights is None:
        meta_weights = uniform_meta_objective([code for code, params in groups.languages.items() if params])
    missing = [code for code in meta_weights if code not in val_batches]
    if missing:
        raise ValueError(f"the meta objective needs a validation batch for every language; missing: {missing}")
    return meta_weights


@dataclass
class MetaGradients:
    """The gradients of one meta step: ∇_{φ_i} M = direct − β · higher_order (Eq. 4), and the losses seen.

    `theta_gradient`: the lookahead's ∇_θ L_train^i(θ, φ_i^t), summed across processes, when asked for
    (`keep_theta_gradient`); `train_losses`: this process's loss share per training micro-batch. Scalars stay
    tensors (no host read); `higher_order_ratio` reads ‖β · higher_order‖ / ‖direct‖ as a float."""

    hypergradient: TensorDict
    direct: TensorDict
    higher_order: TensorDict
    train_loss: torch.Tensor
    meta_loss: torch.Tensor
    higher_order_share: torch.Tensor
    train_losses: list[torch.Tensor] = field(default_factory=list)
    theta_gradient: TensorDict | None = None
    lookahead_share: float | None = None  # ‖∂M/∂φ_i(θ') − ∂M/∂φ_i(θ)‖ / ‖∂M/∂φ_i(θ')‖, when measured

    @property
    def higher_order_ratio(self) -> float:
        return float(self.higher_order_share)


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
    val_seeds: Mapping[str, int] | None = None,
    all_reduce_sum: AllReduceSum | None = None,
    groups: ParameterGroups | None = None,
    lookahead: SGDLookahead | PreconditionedLookahead | None = None,
    meta_weights: Mapping[str, float] | None = None,
    keep_theta_gradient: bool = False,
    objective_precision=contextlib.nullcontext,
    measure_lookahead_share: bool = False,
) -> MetaGradients:
    """Algorithm 1 lines 3-5 for language i over the micro-batches of one optimizer step (Eqs. 3, 4, 8).

    Defaults fit one process: `train_num_items` / `val_num_items` (global label counts) counted here, `seeds` /
    `val_seeds` (dropout, per micro-batch / language) drawn from torch's generator, no `all_reduce_sum`, `groups`
    = `trainable_parameter_groups(model)`, `lookahead` = `SGDLookahead(lookahead_lr)` (Eq. 3), `meta_weights` =
    `uniform_meta_objective` over every language with trainable φ. `objective_precision`: the context of the
    meta objective's passes at θ' (`lookahead.full_precision` under autocast, which would round θ' to θ).
    `measure_lookahead_share`: one more forward/backward of L_val^i at θ for `MetaGradients.lookahead_share`."""
    term = higher_order_term(method, fd_epsilon)
    groups = trainable_parameter_groups(model) if groups is None else groups
    lookahead = SGDLookahead(lookahead_lr) if lookahead is None else lookahead
    meta_weights = _checked_meta_weights(groups, language, meta_weights, val_batches)
    shared, language_params = groups.shared, groups.languages[language]
    train_num_items, val_num_items, seeds = _one_process_defaults(
        train_batches, val_batches, meta_weights, train_num_items, val_num_items, seeds)

    # ∇_θ L_train^i(θ, φ_i), the lookahead's pass; what the higher-order term needs of it rides along
    wrt = {**shared, **language_params} if term.needs_phi_gradient_at_theta else shared
    train = train_gradient(model, train_batches, wrt, train_num_items, seeds, all_reduce_sum,
                           keep_graph=term.keeps_lookahead_graph)
    phi_gradient = {name: train.gradient.pop(name) for name in language_params} if term.needs_phi_gradient_at_theta else None
    theta_prime = lookahead.step(shared, train.gradient)  # Eq. 3
    theta_gradient = _after_lookahead(train, lookahead, keep_theta_gradient)
    with objective_precision():
        outer, direct, meta_loss = meta_objective_gradients(  # M and its gradients at θ'
            model, val_batches, theta_prime, language, language_params, val_num_items, all_reduce_sum, meta_weights,
            val_seeds,
        )
        share = _lookahead_share(model, val_batches, shared, language, language_params, val_num_items,
                                 all_reduce_sum, meta_weights, val_seeds, direct) if measure_lookahead_share else None
    del theta_prime
    training = TrainingPass(model, train_batches, shared, language_params, train_num_items, seeds, all_reduce_sum,
                            attached=train.attached, phi_gradient=phi_gradient)
    higher_order = term(training, lookahead.direction(outer))
    train_losses = train.losses
    del training, train  # frees the attached graph
    hypergradient, ratio = chain_rule(direct, higher_order, lookahead.rate)  # Eq. 4
    return MetaGradients(hypergradient, direct, higher_order, torch.stack(train_losses).sum(), meta_loss, ratio,
                         train_losses, theta_gradient, share)


def _one_process_defaults(train_batches, val_batches, meta_weights, train_num_items, val_num_items, seeds):
    """What a caller on one process may leave out: label counts of its own batches, dropout seeds from torch."""
    train_num_items = count_labels(train_batches) if train_num_items is None else train_num_items
    val_num_items = val_num_items or {code: count_labels([val_batches[code]]) for code in meta_weights}
    seeds = torch.randint(2**62, (len(train_batches),)).tolist() if seeds is None else seeds
    return train_num_items, val_num_items, seeds


def _after_lookahead(train: TrainGradient, lookahead, keep_theta_gradient: bool) -> TensorDict | None:
    """Once θ' is built, g is read only as θ's gradient for its step (`keep_theta_gradient`) or by a lookahead's
    `direction`; the double backward reads the attached θ-gradient through its graph only. Frees the rest of g's
    values before the meta objective, the step's peak (a θ-sized buffer), and returns θ's gradient when kept."""
    holds = getattr(lookahead, "holds_gradient", True)  # a lookahead that does not say may read g in `direction`
    if train.attached is not None:
        release_values(train.attached, keep=train.gradient if keep_theta_gradient or holds else None)
    theta_gradient, train.gradient = (train.gradient if keep_theta_gradient else None), None
    return theta_gradient


def _lookahead_share(model, val_batches, shared, language, language_params, val_num_items, all_reduce_sum,
                     meta_weights, val_seeds, direct_at_lookahead) -> float:
    """How much θ' changes Eq. 4's direct term: ∂M/∂φ_i at θ (only w_i L_val^i contains φ_i; same batch and
    dropout seed as at θ') against ∂M/∂φ_i at θ'. One host read: call it on logging steps only."""
    _, direct_at_theta, _ = meta_objective_gradients(
        model, {language: val_batches[language]}, shared, language, language_params, val_num_items, all_reduce_sum,
        {language: meta_weights[language]}, val_seeds,
    )
    return lookahead_share(direct_at_lookahead, direct_at_theta)


def chain_rule(direct: TensorDict, higher_order: TensorDict, rate: float) -> tuple[TensorDict, torch.Tensor]:
    """Eq. 4: ∇_{φ_i} M = ∂M/∂φ_i − β [∇²_{φ_i,θ} L_train^i] v (v = g for the SGD lookahead), fused; and the
    higher-order share ‖β · higher-order‖ / ‖direct‖ as a tensor."""
    names = list(direct)
    hypergradient = dict(zip(names, torch._foreach_add(
        [direct[n] for n in names], [higher_order[n] for n in names], alpha=-rate)))
    return hypergradient, rate * norm(higher_order) / norm(direct).clamp_min(torch.finfo(torch.float32).tiny)


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
    """∇_{φ_i} M for one training batch of `language` (Eq. 4), keyed by parameter name — compare the methods of
    `HYPERGRADIENT_METHODS` on any MetaXLM model. Parameters are not modified."""
    return meta_step_gradients(
        model, [train_batch], val_batches, language, lookahead_lr=lookahead_lr, method=method, fd_epsilon=fd_epsilon
    ).hypergradient


__all__ = [  # the math of the meta step; the higher-order products live in `hypergradients`, re-exported here
    "DEFAULT_HYPERGRADIENT", "HYPERGRADIENT_METHODS", "HigherOrderTerm", "MetaGradients", "PreconditionedLookahead", "SGDLookahead",
    "TrainGradient", "TrainingPass", "activation_checkpointing_paused", "attached_hvp", "canonical_name", "chain_rule",
    "check_method", "count_labels", "double_backward_hvp", "dropout_seed", "finite_difference_hvp",
    "forward_over_reverse_hvp", "higher_order_term", "hypergradient", "lookahead", "meta_objective_gradients",
    "meta_step_gradients", "mixed_hessian_vector_product", "release_values", "train_gradient",
    "trainable_parameter_groups", "uniform_meta_objective",
]
