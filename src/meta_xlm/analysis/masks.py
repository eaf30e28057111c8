"""Per-language Hard Concrete masks on a frozen pretrained model (paper Section 3.1 "Parameter Sharing", Eq. 1,
Fig. 4a/4b).

For each language separately, learn π = log_alpha of Hard Concrete gates z over parameter groups of a FROZEN
model θ by
    min_π  E_{z ~ q(z|π)} [ (1/N) Σ_i L_MLM(f(x_i; θ ⊙ z)) ]  +  λ E‖θ ⊙ z‖_0 / |θ_gated|            (Eq. 1)
(the L0 term is divided by the number of gated parameters so that λ is "loss per fraction of parameters kept",
independent of model size). Then compare the π of two languages layer by layer.

Parameter groups (the default `DEFAULT_MASK_GROUPS`), for every layer:
- attention: one gate per attention head = the head_size input columns of the attention output projection
  (`attention.output.dense.weight`) that read that head — zeroing them removes the head exactly;
- ffn: one gate per feed-forward neuron = its input column of the FFN output projection (`output.dense.weight`)
  — zeroing it removes the neuron exactly.
Gates act through `torch.func.functional_call` with masked weights; the model's classes are not patched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from meta_xlm.analysis.hard_concrete import expected_l0, sample_gates


# ---------------------------------------------------------------------------------------------- groups
@dataclass(frozen=True)
class MaskGroupSpec:
    """A family of gated parameter groups: `pattern` full-matches weight names (with a `layer` named group);
    each gate covers `unit` input columns: "head" = hidden_size / num_attention_heads columns, "neuron" = 1."""

    sublayer: str
    pattern: str
    unit: str


DEFAULT_MASK_GROUPS = (
    MaskGroupSpec(
        "attention", r"roberta\.encoder\.layer\.(?P<layer>\d+)\.attention\.output\.dense\.weight", "head"
    ),
    MaskGroupSpec("ffn", r"roberta\.encoder\.layer\.(?P<layer>\d+)\.output\.dense\.weight", "neuron"),
)


@dataclass(frozen=True)
class GatedWeight:
    """One weight matrix (out, in) whose input columns are gated in blocks of `columns_per_gate`."""

    name: str
    layer: int
    sublayer: str
    columns_per_gate: int
    num_gates: int
    offset: int  # index of its first gate in the flat π vector
    rows: int  # out_features: parameters per gated column


@dataclass
class GateMap:
    """Which weight columns each entry of the flat π vector gates: the gated weights in π order."""

    weights: list[GatedWeight]

    @property
    def num_gates(self) -> int:
        return sum(weight.num_gates for weight in self.weights)

    def group_sizes(self) -> torch.Tensor:
        """Parameters switched by each gate, (num_gates,)."""
        return torch.cat(
            [
                torch.full((w.num_gates,), w.rows * w.columns_per_gate, dtype=torch.float64)
                for w in self.weights
            ]
        )

    def gate_labels(self) -> list[tuple[int, str, int]]:
        """(layer, sublayer, index within its weight) of every gate, in π order."""
        return [(w.layer, w.sublayer, index) for w in self.weights for index in range(w.num_gates)]

    def slices(self, layer: int, sublayer: str) -> list[slice]:
        return [
            slice(w.offset, w.offset + w.num_gates)
            for w in self.weights
            if w.layer == layer and w.sublayer == sublayer
        ]

    def layers(self) -> list[int]:
        return sorted({w.layer for w in self.weights})

    def sublayers(self) -> list[str]:
        return list(dict.fromkeys(w.sublayer for w in self.weights))


def resolve_gate_map(model: nn.Module, specs: Sequence[MaskGroupSpec] = DEFAULT_MASK_GROUPS) -> GateMap:
    """The gated weights of `model` for `specs`; an error names a spec that matches no parameter."""
    head_size = model.config.hidden_size // model.config.num_attention_heads
    columns = {"head": head_size, "neuron": 1}
    weights, offset = [], 0
    names = [name for name, _ in model.named_parameters()]
    parameters = dict(model.named_parameters())
    for spec in specs:
        if spec.unit not in columns:
            raise ValueError(
                f"mask group {spec.sublayer!r}: unit={spec.unit!r}, expected one of {sorted(columns)}"
            )
        pattern = re.compile(spec.pattern)
        if "layer" not in pattern.groupindex:
            raise ValueError(
                f"mask group {spec.sublayer!r}: pattern {spec.pattern!r} needs a (?P<layer>...) group"
            )
        matched = [(name, pattern.fullmatch(name)) for name in names]
        matched = [(name, match) for name, match in matched if match]
        if not matched:
            raise ValueError(
                f"mask group {spec.sublayer!r}: pattern {spec.pattern!r} matches no parameter of "
                f"{type(model).__name__} (parameter names look like {names[:3]} ... {names[-2:]})"
            )
        for name, match in matched:
            rows, width = parameters[name].shape
            if width % columns[spec.unit]:
                raise ValueError(
                    f"{name}: {width} input columns do not split into {spec.unit}s of {columns[spec.unit]}"
                )
            num_gates = width // columns[spec.unit]
            weights.append(
                GatedWeight(
                    name, int(match["layer"]), spec.sublayer, columns[spec.unit], num_gates, offset, rows
                )
            )
            offset += num_gates
    return GateMap(weights)


def masked_weights(model: nn.Module, gate_map: GateMap, gates: torch.Tensor) -> dict[str, torch.Tensor]:
    """θ ⊙ z for the gated weights: W (out, in) * z repeated over each gate's columns (in,)."""
    parameters = dict(model.named_parameters())
    masked = {}
    for weight in gate_map.weights:
        z = gates[weight.offset : weight.offset + weight.num_gates].repeat_interleave(
            weight.columns_per_gate
        )  # (in,)
        masked[weight.name] = parameters[weight.name] * z.to(parameters[weight.name].dtype)[None, :]
    return masked


# ---------------------------------------------------------------------------------------------- training
def fit_gates(
    loss_of_gates: Callable[[torch.Tensor], torch.Tensor],
    num_gates: int,
    steps: int,
    l0_lambda: float,
    group_sizes: torch.Tensor | None = None,
    learning_rate: float = 0.1,
    init_log_alpha: float = 0.0,
    seed: int = 0,
    progress: str | None = None,
) -> torch.Tensor:
    """Minimise E_z[loss_of_gates(z)] + λ E‖θ ⊙ z‖_0 / |θ_gated| over π with Adam, one z sample per step.

    π starts at the same value for every gate (`init_log_alpha`, 0 → P(z > 0) ≈ 0.83), so that differences
    between languages' π come from their data alone. Returns π (num_gates,), detached.
    """
    generator = torch.Generator().manual_seed(seed)
    log_alpha = torch.full((num_gates,), float(init_log_alpha), requires_grad=True)
    sizes = group_sizes if group_sizes is not None else torch.ones(num_gates, dtype=torch.float64)
    optimizer = torch.optim.Adam([log_alpha], lr=learning_rate)
    for _ in tqdm(range(steps), desc=progress or "masks", disable=progress is None):
        gates = sample_gates(log_alpha, generator=generator)  # (num_gates,)
        penalty = expected_l0(log_alpha, sizes) / sizes.sum()
        loss = loss_of_gates(gates) + l0_lambda * penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return log_alpha.detach()


def learn_language_mask(
    model: nn.Module,
    gate_map: GateMap,
    batches: Iterator[Mapping[str, torch.Tensor]],
    steps: int,
    l0_lambda: float,
    learning_rate: float = 0.1,
    seed: int = 0,
    progress: str | None = None,
) -> torch.Tensor:
    """π of one language: the model is frozen (requires_grad off, eval mode: no dropout) and `batches` are that
    language's MLM batches (input_ids, attention_mask, labels, lang_ids). Returns π (num_gates,)."""
    model.requires_grad_(False)
    model.eval()

    def mlm_loss(gates: torch.Tensor) -> torch.Tensor:
        batch = next(batches)
        weights = masked_weights(model, gate_map, gates)
        return functional_call(model, weights, args=(), kwargs=dict(batch)).loss

    return fit_gates(
        mlm_loss,
        gate_map.num_gates,
        steps,
        l0_lambda,
        gate_map.group_sizes(),
        learning_rate,
        seed=seed,
        progress=progress,
    )


# ---------------------------------------------------------------------------------------------- comparison
def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


def centered_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a − mean a, b − mean b) (Pearson correlation): insensitive to an offset shared by all gates."""
    return cosine(a - a.double().mean(), b - b.double().mean())


def pi_similarity(
    pis: Mapping[str, torch.Tensor], gate_map: GateMap, pairs: Sequence[tuple[str, str]]
) -> list[dict]:
    """Fig. 4a: similarity of π between two runs per layer and sublayer, and over all layers ("all").

    `cosine` is the paper's measure. `centered_cosine` subtracts each run's mean π first: when every gate of a
    sublayer drifts the same way (the L0 penalty pushes all of them; Adam moves every coordinate at about the
    same rate), the shared offset makes the plain cosine ≈ 1 for any pair, and only the centred one shows which
    groups the languages rank differently.
    """
    rows = []
    for first, second in pairs:
        for sublayer in gate_map.sublayers():
            for layer in [*gate_map.layers(), "all"]:
                chosen = gate_map.layers() if layer == "all" else [layer]
                index = [s for chosen_layer in chosen for s in gate_map.slices(chosen_layer, sublayer)]
                a = torch.cat([pis[first][s] for s in index])
                b = torch.cat([pis[second][s] for s in index])
                rows.append(
                    {
                        "pair": f"{first}-{second}",
                        "layer": layer,
                        "sublayer": sublayer,
                        "cosine": cosine(a, b),
                        "centered_cosine": centered_cosine(a, b),
                    }
                )
    return rows


def extreme_groups(
    pi_language: torch.Tensor, pi_other: torch.Tensor, gate_map: GateMap, count: int = 10
) -> list[dict]:
    """Fig. 4b: the `count` gates with the most negative and the `count` with the most positive π of one language,
    with the other run's π beside them; both normalised by their own max |π| ("normalized pruning variables")."""
    normalised = pi_language / pi_language.abs().max().clamp_min(1e-30)
    other = pi_other / pi_other.abs().max().clamp_min(1e-30)
    order = torch.argsort(normalised)
    chosen = torch.cat([order[:count], order[-count:]]).tolist()
    labels = gate_map.gate_labels()
    return [
        {
            "group": f"L{labels[i][0]}.{labels[i][1]}.{labels[i][2]}",
            "layer": labels[i][0],
            "sublayer": labels[i][1],
            "index": labels[i][2],
            "pi": float(normalised[i]),
            "pi_other": float(other[i]),
        }
        for i in chosen
    ]


# ---------------------------------------------------------------------------------------------- files
def save_pi(path: str | Path, pi: torch.Tensor, gate_map: GateMap, metadata: Mapping[str, str]) -> None:
    """π and its gate map (JSON under the safetensors metadata key "layout") in one file."""
    meta = {
        "layout": json.dumps([asdict(weight) for weight in gate_map.weights]),
        **{k: str(v) for k, v in metadata.items()},
    }
    save_file({"log_alpha": pi.contiguous()}, str(path), metadata=meta)


def load_pi(path: str | Path) -> tuple[torch.Tensor, GateMap]:
    with safe_open(str(path), "pt") as handle:
        gate_map = GateMap([GatedWeight(**entry) for entry in json.loads(handle.metadata()["layout"])])
    return load_file(str(path))["log_alpha"], gate_map


__all__ = [
    "DEFAULT_MASK_GROUPS",
    "GatedWeight",
    "MaskGroupSpec",
    "GateMap",
    "centered_cosine",
    "cosine",
    "extreme_groups",
    "fit_gates",
    "learn_language_mask",
    "load_pi",
    "masked_weights",
    "pi_similarity",
    "resolve_gate_map",
    "save_pi",
]
