"""One pass over a batch, and the tensor-dict arithmetic the meta step is written in.

Shared by `meta` (the bilevel step's flow) and `hypergradients` (one strategy per way of computing Eq. 4's
higher-order term). Nothing here touches `.grad`, an optimizer or a process group: gradients come from
`torch.autograd.grad`, and sums across processes go through a callable the caller gives (`AllReduceSum`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

Batch = Mapping[str, torch.Tensor]
TensorDict = dict[str, torch.Tensor]
AllReduceSum = Callable[[torch.Tensor], torch.Tensor]


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
def dropout_seed(seed: int, device: torch.device) -> Iterator[None]:
    """Replay one dropout realisation: passes over the same micro-batch at θ, θ+εg and θ−εg must see the same
    masks, or Eq. 8's difference measures dropout noise. The caller's random stream is left untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield


def attention_dropout_active(model: nn.Module) -> bool:
    """Whether SDPA draws random numbers in this model's forward (attention dropout on, training mode)."""
    return model.training and getattr(model.config, "attention_probs_dropout_prob", 0.0) > 0


@contextlib.contextmanager
def same_masks(model: nn.Module, seed: int, device: torch.device, math_kernel: bool = False) -> Iterator[None]:
    """The context of every pass over one training micro-batch: its dropout seed, and SDPA's math kernel when a
    pass needs it (double backward, forward-mode AD) or when attention dropout is on. SDPA's kernels draw their
    attention-dropout masks differently, so without one kernel for every pass the lookahead, the higher-order
    term's passes and the θ step would see different masks on the same micro-batch. Without attention dropout
    SDPA draws nothing, the hidden-dropout masks follow the seed alone, and the faster default kernel stays."""
    kernel = math_kernel or attention_dropout_active(model)
    with dropout_seed(seed, device), (sdpa_kernel(SDPBackend.MATH) if kernel else contextlib.nullcontext()):
        yield


def grad(loss: torch.Tensor | Sequence[torch.Tensor], params: Mapping[str, torch.Tensor], **kwargs) -> TensorDict:
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True, materialize_grads=True, **kwargs)
    return dict(zip(params, grads))


def add_(total: TensorDict | None, grads: TensorDict) -> TensorDict:
    """total += grads (one fused `_foreach_add_`), or grads when total is None."""
    if total is None:
        return grads
    torch._foreach_add_(list(total.values()), [grads[name] for name in total])
    return total


def all_reduce(grads: TensorDict, all_reduce_sum: AllReduceSum | None) -> TensorDict:
    """Sum a dict of tensors across processes with one collective (flatten, reduce, split)."""
    if all_reduce_sum is None or not grads:
        return grads
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads.values()]))
    sizes = [g.numel() for g in grads.values()]
    return {name: part.view_as(grads[name]) for name, part in zip(grads, flat.split(sizes))}


def norm(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """‖tensors‖₂ over the whole dict, as a 0-dim float tensor (no host sync): one `_foreach_norm`."""
    norms = torch._foreach_norm([t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
                                 for t in tensors.values()])
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


def scaled_sum(base: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor],
               scale: torch.Tensor | float) -> TensorDict:
    """base + scale · vector (detached base), fused: θ' = θ − β g, θ ± ε v. `scale` may be a 0-dim tensor, so
    ε = fd_epsilon / ‖v‖ needs no host read."""
    names = list(base)
    if isinstance(scale, torch.Tensor):
        result = torch._foreach_mul([vector[n] for n in names], scale)
        torch._foreach_add_(result, [base[n].detach() for n in names])
    else:
        result = torch._foreach_add([base[n].detach() for n in names], [vector[n] for n in names], alpha=scale)
    return dict(zip(names, result))
