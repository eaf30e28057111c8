"""Gradient surgery across languages: PCGrad (Yu et al., NeurIPS 2020) and GradVac (Wang et al., ICLR 2021).

g_1..g_L are the gradients of the shared parameters θ, one per language (flat vectors, the rows of G (L, n)). Both
methods replace every g_i by g_i' = g_i + Σ_{j≠i} a_ij g_j and update θ with Σ_i g_i'. Each g_i' is therefore a
linear combination of the ORIGINAL gradients, g_i' = Σ_k C_ik g_k, and the algorithms run on the L × L Gram matrix
M = G Gᵀ (float64) and the coefficient matrix C alone:

    g_i'·g_j = (C M)_ij,      ‖g_i'‖² = (C M Cᵀ)_ii,      Σ_i g_i' = (Cᵀ 1)ᵀ G.

Only the Gram matrix and the final weighted sum touch full-length vectors: beyond one backward pass per language, a
surgery step costs one (L, n) × (n, L) product and one L-term sum, and no modified copy of a gradient is stored.

The second half of the module (`LanguageGradients`) is the trainer's side: one gradient buffer per language for
an optimizer step, filled micro-batch by micro-batch, summed across processes through a callable the caller gives,
combined with the functions above and written to `.grad`. No Accelerator or Trainer object is used here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .analysis.gradient_conflict import segments_of
from .modeling_meta_xlm import parameter_groups

GRADIENT_SURGERY_METHODS = ("pcgrad", "gradvac")
SURGERY_GRANULARITIES = ("model", "layer", "matrix")
GRAM_CHUNK = 4096

AllReduceInPlace = Callable[[torch.Tensor], None]  # sums a tensor across processes, in place


# ---------------------------------------------------------------------------------------------- the math
def _as_matrix(gradients: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    matrix = gradients if isinstance(gradients, torch.Tensor) else torch.stack([g.reshape(-1) for g in gradients])
    if matrix.dim() != 2 or matrix.shape[0] < 2:
        raise ValueError(f"gradient surgery needs at least two flat gradients (L, n), got shape {tuple(matrix.shape)}")
    return matrix


def gram_matrix(gradients: torch.Tensor) -> torch.Tensor:
    """M = G Gᵀ (L, L) in float64: every dot product the algorithms need.

    Products over chunks of `GRAM_CHUNK` columns in the gradients' dtype, summed in float64: one float32 product
    over 12M parameters put the cosine off by ~2e-5 (seen), the chunked sum by ~1e-10, and it is no slower."""
    count, numel = gradients.shape
    blocks = numel // GRAM_CHUNK
    head = gradients[:, : blocks * GRAM_CHUNK].reshape(count, blocks, GRAM_CHUNK).transpose(0, 1)  # (k, L, chunk)
    tail = gradients[:, blocks * GRAM_CHUNK :]  # (L, numel mod chunk)
    return torch.bmm(head, head.transpose(1, 2)).double().sum(0) + (tail @ tail.T).double()


def combine(gradients: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Σ_i g_i' = (Cᵀ 1)ᵀ G: the update of θ, shape (n,)."""
    return coefficients.sum(0).to(gradients.device, gradients.dtype) @ gradients


def _random_others(i: int, count: int, generator: torch.Generator | None) -> list[int]:
    return [j for j in torch.randperm(count, generator=generator).tolist() if j != i]


# The L × L algebra runs on Python floats: a few hundred scalar operations per group, which as torch ops would
# cost more than the Gram matrix itself at per-matrix granularity.
def _dot(row: list[float], column: int, gram: list[list[float]]) -> float:
    return sum(c * gram[k][column] for k, c in enumerate(row))  # (Σ_k C_ik g_k)·g_column


def _squared_norm(row: list[float], gram: list[list[float]]) -> float:
    return max(sum(row[k] * _dot(row, k, gram) for k in range(len(row))), 0.0)  # ‖Σ_k C_ik g_k‖²


def pcgrad_coefficients(gram: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad (Yu et al. 2020, Alg. 1) on the Gram matrix: C with g_i' = Σ_k C_ik g_k.

    For each g_i, over j ≠ i in random order: if g_i'·g_j < 0, g_i' ← g_i' − (g_i'·g_j / ‖g_j‖²) g_j, where g_i' is
    the already projected g_i and g_j the original gradient.
    """
    gram = gram.tolist()
    count = len(gram)
    coefficients = [[float(k == i) for k in range(count)] for i in range(count)]
    for i in range(count):
        for j in _random_others(i, count, generator):
            dot = _dot(coefficients[i], j, gram)  # g_i'·g_j
            if dot < 0 and gram[j][j] > 0:
                coefficients[i][j] -= dot / gram[j][j]
    return torch.tensor(coefficients, dtype=torch.float64)


def pcgrad(gradients: torch.Tensor | Sequence[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad: project every g_i off the g_j it conflicts with (g_i·g_j < 0), in random order, and sum.

        g_i ← g_i − (g_i·g_j / ‖g_j‖²) g_j   for j ≠ i in random order, when g_i·g_j < 0;   return Σ_i g_i

    Args:
        gradients: (L, n) or L flat vectors, one per language.
        generator: the random order of the j's (same generator state → same result on every process).
    Returns the combined vector (n,); without any conflict it is the plain sum Σ_i g_i.
    """
    matrix = _as_matrix(gradients)
    return combine(matrix, pcgrad_coefficients(gram_matrix(matrix), generator))


class GradVac:
    """Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, ICLR 2021, Alg. 1) with its EMA targets as state.

    For every group (a part of θ, see `surgery_granularity`) and ordered language pair (i, j), a target cosine φ̂_ij
    (starting at 0). For each g_i, over j ≠ i in random order, with φ_ij = cos(g_i', g_j):

        if φ_ij < φ̂_ij:   g_i' ← g_i' + ‖g_i'‖ (φ̂_ij √(1 − φ_ij²) − φ_ij √(1 − φ̂_ij²)) / (‖g_j‖ √(1 − φ̂_ij²)) · g_j
        φ̂_ij ← (1 − β) φ̂_ij + β φ_ij          (β = `ema`)

    The added multiple of g_j is the closed form that makes cos(g_i', g_j) = φ̂_ij exactly; with φ̂_ij = 0 it is
    PCGrad's projection. Returns Σ_i g_i'.
    """

    def __init__(self, num_languages: int, num_groups: int = 1, ema: float = 0.01):
        if not 0 < ema <= 1:
            raise ValueError(f"gradvac_ema must be in (0, 1], got {ema}")
        self.ema = ema
        self.targets = torch.zeros(num_groups, num_languages, num_languages, dtype=torch.float64)  # φ̂ (G, L, L)

    def coefficients(
        self, gram: torch.Tensor, group: int = 0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """C with g_i' = Σ_k C_ik g_k for one group's Gram matrix; updates that group's targets."""
        count = gram.shape[0]
        if self.targets.shape[1:] != (count, count):
            raise ValueError(f"GradVac holds targets for {self.targets.shape[1]} languages, got {count} gradients")
        gram, targets = gram.tolist(), self.targets[group].tolist()
        coefficients = [[float(k == i) for k in range(count)] for i in range(count)]
        for i in range(count):
            for j in _random_others(i, count, generator):
                norm_i, norm_j = math.sqrt(_squared_norm(coefficients[i], gram)), math.sqrt(max(gram[j][j], 0.0))
                if norm_i == 0 or norm_j == 0:
                    continue  # no direction: no cosine to fix or to average
                cosine = _dot(coefficients[i], j, gram) / (norm_i * norm_j)  # φ_ij = cos(g_i', g_j)
                target = targets[i][j]  # φ̂_ij
                if cosine < target:
                    sine_target = math.sqrt(max(1 - target**2, 1e-12))
                    lift = norm_i * (target * math.sqrt(max(1 - cosine**2, 0.0)) - cosine * sine_target)
                    coefficients[i][j] += lift / (norm_j * sine_target)
                targets[i][j] = (1 - self.ema) * target + self.ema * cosine
        self.targets[group] = torch.tensor(targets, dtype=torch.float64)
        return torch.tensor(coefficients, dtype=torch.float64)

    def __call__(
        self, gradients: torch.Tensor | Sequence[torch.Tensor], group: int = 0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        matrix = _as_matrix(gradients)
        return combine(matrix, self.coefficients(gram_matrix(matrix), group, generator))

    def state_dict(self) -> dict[str, torch.Tensor | float]:
        return {"targets": self.targets.clone(), "ema": self.ema}

    def load_state_dict(self, state: Mapping[str, torch.Tensor | float]) -> None:
        targets = torch.as_tensor(state["targets"], dtype=torch.float64)
        if targets.shape != self.targets.shape:
            raise ValueError(
                f"GradVac state has targets of shape {tuple(targets.shape)} (groups, languages, languages), "
                f"this run needs {tuple(self.targets.shape)}: same languages and surgery_granularity?"
            )
        self.targets.copy_(targets)


def cosines(gram: torch.Tensor) -> torch.Tensor:
    """cos(g_i, g_j) from a Gram matrix; NaN where a gradient is zero."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    return gram / torch.outer(norms, norms)


# ---------------------------------------------------------------------------------------------- arguments
def parse_language_loss_weights(entries: Sequence[str] | Mapping[str, float] | None) -> dict[str, float] | None:
    """`["en=1.0", "sw=2.0"]` (the recipes' LANG=VALUE form) or `{"en": 1.0}` -> {code: weight}."""
    if entries is None or len(entries) == 0:
        return None
    if isinstance(entries, Mapping):
        entries = [f"{code}={weight}" for code, weight in entries.items()]
    weights = {}
    for entry in entries:
        code, _, value = str(entry).partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not code or code in weights or not weight >= 0:
            raise ValueError(f"language_loss_weights entry {entry!r} is not LANG=WEIGHT (one per language, >= 0)")
        weights[code] = weight
    return weights


def check_surgery_arguments(method: str | None, granularity: str, ema: float, meta_learning: bool) -> None:
    if method is not None and method not in GRADIENT_SURGERY_METHODS:
        raise ValueError(f"gradient_surgery={method!r} is not one of {GRADIENT_SURGERY_METHODS} (or None)")
    if granularity not in SURGERY_GRANULARITIES:
        raise ValueError(f"surgery_granularity={granularity!r} is not one of {SURGERY_GRANULARITIES}")
    if not 0 < ema <= 1:
        raise ValueError(f"gradvac_ema must be in (0, 1], got {ema}")
    if method is not None and meta_learning:
        raise ValueError(
            f"gradient_surgery={method!r} with meta_learning=True is not supported: the meta step needs "
            "single-language optimizer steps, surgery needs every language in each step"
        )


# ---------------------------------------------------------------------------------------------- the trainer's side
def surgery_group(name: str, granularity: str) -> str:
    """The group a shared parameter belongs to: the whole model, its layer ("layer.3", "embeddings", "head"), or
    the parameter itself."""
    if granularity == "model":
        return "model"
    return segments_of(name)[0] if granularity == "layer" else name


def split_by_language(batch: Mapping[str, torch.Tensor], num_languages: int) -> list[tuple[int, dict]]:
    """[(language index, the rows of that language)] for a batch with `lang_ids` (B,); one entry for a
    single-language batch (no copy)."""
    if "lang_ids" not in batch:
        raise ValueError(f"a training batch has no 'lang_ids' (keys: {sorted(batch)}); language-balanced steps "
                         "need the language of every row")
    lang_ids = batch["lang_ids"]
    present = torch.bincount(lang_ids, minlength=num_languages).nonzero().squeeze(1).tolist()
    if len(present) == 1:
        return [(present[0], dict(batch))]
    return [(k, {key: value[lang_ids == k] for key, value in batch.items()}) for k in present]


class LanguageGradients:
    """The per-language gradients of one optimizer step, and their combination into `.grad`.

    θ: one buffer G (L, n) (row l: language l's gradient), its columns ordered by surgery group so that each group
    is one contiguous slice. φ: one flat buffer, since φ_l only ever receives language l's gradient. Language l's
    gradient is that of its share of the step's loss, Σ_{rows of l} CE / N_step, so Σ_l g_l is the plain step's
    gradient. `finish` combines per group: θ's gradient = Σ_l g_l' with g_l' from the method on w_l g_l (w: fixed
    per-language loss weights, 1 by default; `method=None` gives the weighted sum Σ_l w_l g_l), φ_l's = w_l g_φ_l.

    Args:
        model: the unwrapped model (its parameters receive `.grad`).
        languages: the codes taking part, in `config.languages` order.
        method: None, "pcgrad" or "gradvac".
        granularity: "model" | "layer" | "matrix" (see `surgery_group`).
        ema: GradVac's β.
        weights: {code: w_l}; None = 1 for every language.
    """

    def __init__(self, model: nn.Module, languages: Sequence[str], method: str | None, granularity: str = "model",
                 ema: float = 0.01, weights: Mapping[str, float] | None = None):
        groups = parameter_groups(model)
        config_languages = list(model.config.languages)
        self.languages = list(languages)
        self.rows = {config_languages.index(code): row for row, code in enumerate(self.languages)}
        self.method = method
        weights = {code: 1.0 for code in self.languages} if weights is None else weights
        self.weights = torch.tensor([weights[code] for code in self.languages], dtype=torch.float64)  # w (L,)
        self.theta, self.groups = _grouped_layout(groups.shared, granularity)
        self.phi = {code: [p for p in groups.languages[code].values() if p.requires_grad] for code in self.languages}
        dtype = torch.promote_types(self.theta[0].dtype, torch.float32)
        device = self.theta[0].device
        numel = sum(p.numel() for p in self.theta)
        self.buffer = torch.zeros(len(self.languages), numel, dtype=dtype, device=device)  # G (L, n)
        self.theta_views = [list(_views(row, self.theta)) for row in self.buffer]
        phi_params = [p for code in self.languages for p in self.phi[code]]
        self.phi_buffer = torch.zeros(sum(p.numel() for p in phi_params), dtype=dtype, device=device)
        self.phi_views = dict(zip(map(id, phi_params), _views(self.phi_buffer, phi_params)))
        self.gradvac = GradVac(len(self.languages), len(self.groups), ema) if method == "gradvac" else None
        self._pending = False

    def accumulate(self, language_index: int, loss: torch.Tensor) -> None:
        """Add ∇ of `loss` (language `language_index`'s part of the step loss, an index into config.languages)
        w.r.t. θ and that language's φ to its buffers (torch.autograd.grad: `.grad` and DDP stay untouched)."""
        if not self._pending:
            self.buffer.zero_()
            self.phi_buffer.zero_()
            self._pending = True
        if language_index not in self.rows:
            raise ValueError(f"a batch of language index {language_index}, which takes no part in this run "
                             f"(languages {self.languages})")
        row = self.rows[language_index]
        phi = self.phi[self.languages[row]]
        grads = torch.autograd.grad(loss, self.theta + phi, allow_unused=True)
        targets = self.theta_views[row] + [self.phi_views[id(p)] for p in phi]
        for target, grad in zip(targets, grads):
            if grad is not None:
                target.add_(grad)

    def finish(self, all_reduce_sum_: AllReduceInPlace | None,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum the buffers across processes (in place), combine, write `.grad` of θ and φ.

        Returns the cosines (L, L) between the languages' θ gradients before and after surgery, whole θ."""
        if all_reduce_sum_ is not None:
            all_reduce_sum_(self.buffer)
            all_reduce_sum_(self.phi_buffer)
        self._pending = False
        columns = [columns for _, columns in self.groups]
        grams = torch.stack([gram_matrix(self.buffer[:, c]) for c in columns]).cpu()  # (G, L, L), one transfer
        grams = grams * torch.outer(self.weights, self.weights)  # Gram matrices of the weighted w_l g_l
        coefficients = torch.stack([self._coefficients(gram, k, generator) for k, gram in enumerate(grams)])
        after = (coefficients @ grams @ coefficients.transpose(1, 2)).sum(0)  # Gram of the g_l', whole θ
        on_buffer = (coefficients * self.weights).to(self.buffer.device)  # g_l' = Σ_k C_lk w_k g_k: C diag(w)
        combined = torch.empty_like(self.buffer[0])  # θ's gradient (n,)
        for c, group_coefficients in zip(columns, on_buffer):
            combined[c] = combine(self.buffer[:, c], group_coefficients)
        for param, view in zip(self.theta, _views(combined, self.theta)):
            param.grad = view.to(param.dtype)
        for row, code in enumerate(self.languages):
            for param in self.phi[code]:
                param.grad = self.phi_views[id(param)].mul_(float(self.weights[row])).to(param.dtype)
        return cosines(grams.sum(0)), cosines(after)

    def _coefficients(self, gram: torch.Tensor, group: int, generator: torch.Generator | None) -> torch.Tensor:
        if self.method == "pcgrad":
            return pcgrad_coefficients(gram, generator)
        if self.method == "gradvac":
            return self.gradvac.coefficients(gram, group, generator)
        return torch.eye(len(self.languages), dtype=torch.float64)

    def state_dict(self) -> dict:
        state = {"languages": self.languages, "groups": [name for name, _ in self.groups]}
        if self.gradvac is not None:
            state["gradvac"] = self.gradvac.state_dict()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        groups = [name for name, _ in self.groups]
        if list(state["languages"]) != self.languages or list(state["groups"]) != groups:
            raise ValueError(f"the surgery state is for languages {state['languages']} and {len(state['groups'])} "
                             f"groups; this run has {self.languages} and {len(groups)}")
        if self.gradvac is not None:
            self.gradvac.load_state_dict(state["gradvac"])


def _grouped_layout(
    shared: Mapping[str, nn.Parameter], granularity: str
) -> tuple[list[nn.Parameter], list[tuple[str, slice]]]:
    """θ's trainable parameters ordered group by group, and each group's contiguous slice of the flat vector."""
    members: dict[str, list[nn.Parameter]] = {}
    for name, param in shared.items():
        if param.requires_grad:
            members.setdefault(surgery_group(name, granularity), []).append(param)
    ordered, groups, start = [], [], 0
    for group, params in members.items():
        size = sum(p.numel() for p in params)
        ordered += params
        groups.append((group, slice(start, start + size)))
        start += size
    return ordered, groups


def _views(flat: torch.Tensor, params: Sequence[torch.Tensor]):
    return (part.view_as(p) for part, p in zip(flat.split([p.numel() for p in params]), params))
