"""Gradient conflict between languages (paper Section 3.1 "Gradient Conflict", Fig. 3; Yu et al. 2020).

Every k training steps, one batch per language (accumulated to `target_sentences`, the paper: 4096) gives the
gradient of the MLM loss with respect to the SHARED parameters θ (`parameter_groups(model).shared`); the cosine
similarity between two languages' gradients is logged for the whole model and for every layer and sublayer
(attention vs feed-forward), with a same-language baseline from two independent batches of the reference
language ("En-En"). `cosine_matrices` gives the same cosines for every pair of many languages at once (the
n × n matrix of the seven-language study, whole model and per layer).

The measurement must not change training: gradients come from `torch.autograd.grad` (no `.grad`, no optimizer),
the model runs in eval mode (no dropout), and the random state of torch (CPU + CUDA), python and numpy is saved
before and restored after, with the probe drawing from its own seeded stream in between.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import TrainerCallback

from meta_xlm.modeling_meta_xlm import parameter_groups

LAYER_PATTERN = re.compile(r"(?:^|\.)layer\.(\d+)\.(attention|intermediate|output)\.")


# ---------------------------------------------------------------------------------------------- flat index
@dataclass
class SharedGradientIndex:
    """Where each shared parameter sits in one flat gradient vector, and which segments it belongs to.

    Segments: "all"; "embeddings"; "lm_head" (any head); "layer.{i}"; "layer.{i}.attention" (self-attention
    + its output projection and LayerNorm); "layer.{i}.ffn" (intermediate + output dense and LayerNorm).
    """

    names: list[str]
    params: list[nn.Parameter]
    sizes: list[int]
    segments: dict[str, list[int]]  # segment -> indices into names

    @property
    def numel(self) -> int:
        return sum(self.sizes)


def segments_of(name: str) -> list[str]:
    """The segments a shared parameter counts towards (besides "all")."""
    match = LAYER_PATTERN.search(name)
    if match:
        layer = f"layer.{match.group(1)}"
        sublayer = "attention" if match.group(2) == "attention" else "ffn"
        return [layer, f"{layer}.{sublayer}"]
    if "embeddings." in name:
        return ["embeddings"]
    return ["head"]


def shared_gradient_index(model: nn.Module) -> SharedGradientIndex:
    """The flat index of `model`'s trainable shared parameters θ (`parameter_groups(model).shared`)."""
    shared = {name: param for name, param in parameter_groups(model).shared.items() if param.requires_grad}
    if not shared:
        raise ValueError(f"{type(model).__name__} has no trainable shared parameters to measure gradients of")
    names = list(shared)
    segments: dict[str, list[int]] = {"all": list(range(len(names)))}
    for index, name in enumerate(names):
        for segment in segments_of(name):
            segments.setdefault(segment, []).append(index)
    return SharedGradientIndex(names, list(shared.values()), [p.numel() for p in shared.values()], segments)


# ---------------------------------------------------------------------------------------------- gradients
def accumulated_gradient(
    model: nn.Module,
    gradient_index: SharedGradientIndex,
    batches: Iterator[Mapping[str, torch.Tensor]],
    target_sentences: int,
) -> tuple[torch.Tensor, int]:
    """∇_θ of the mean MLM loss over micro-batches drawn from `batches` until `target_sentences` sentences
    (gradient accumulation, as the paper's footnote 2). Each micro-batch's loss is weighted by its share of the
    sentences. Returns (flat gradient (numel,), sentences used). Gradients go into ONE flat buffer through views
    (flattened once), via torch.autograd.grad: `.grad` of the parameters is never touched."""
    device = gradient_index.params[0].device
    flat = torch.zeros(gradient_index.numel, dtype=torch.float32, device=device)  # (numel,)
    views = [view.view_as(p) for view, p in zip(flat.split(gradient_index.sizes), gradient_index.params)]
    sentences = 0
    while sentences < target_sentences:
        try:
            batch = next(batches)
        except StopIteration:
            raise ValueError(
                f"the batches ran out after {sentences} sentences; target_sentences={target_sentences}"
            ) from None
        batch = {key: value.to(device) for key, value in batch.items()}
        batch_sentences = int(batch["input_ids"].shape[0])
        loss = model(**batch).loss * (batch_sentences / target_sentences)
        grads = torch.autograd.grad(loss, gradient_index.params, allow_unused=True)
        for view, grad in zip(views, grads):
            if grad is not None:
                view.add_(grad)
        sentences += batch_sentences
    return flat, sentences


def segment_cosines(
    first: torch.Tensor, second: torch.Tensor, gradient_index: SharedGradientIndex
) -> dict[str, float]:
    """cos(g1, g2) = g1·g2 / (‖g1‖ ‖g2‖) over every segment of the index; NaN where a gradient is zero."""
    sizes = gradient_index.sizes
    per_param = torch.stack(
        [
            torch.stack([(a * b).sum(), (a * a).sum(), (b * b).sum()])
            for a, b in zip(first.double().split(sizes), second.double().split(sizes))
        ]
    )  # (num_params, 3): dot, ‖g1‖², ‖g2‖² per parameter
    cosines = {}
    for segment, indices in gradient_index.segments.items():
        dot, square1, square2 = per_param[indices].sum(0).tolist()
        norm = (square1 * square2) ** 0.5
        cosines[segment] = dot / norm if norm > 0 else float("nan")
    return cosines


@contextmanager
def preserved_rng_state():
    """Save torch (CPU and every CUDA device), python and numpy random states; restore them on exit."""
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@contextmanager
def eval_mode(model: nn.Module):
    """No dropout during the probe (and no dropout random numbers drawn); the training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def seed_probe(seed: int) -> None:
    torch.manual_seed(seed)  # also seeds every CUDA device
    random.seed(seed)
    np.random.seed(seed % 2**32)


REPLICATE_SUFFIX = "#2"  # the reference language's second, independent batch (the En-En baseline)


def replicate_of(language: str) -> str:
    return f"{language}{REPLICATE_SUFFIX}"


def language_gradients(
    model: nn.Module,
    batches_by_language: Mapping[str, Iterator[Mapping[str, torch.Tensor]]],
    target_sentences: int,
    reference_language: str | None,
    seed: int,
    gradient_index: SharedGradientIndex,
) -> dict[str, torch.Tensor]:
    """The accumulated shared-parameter gradient of every language in `batches_by_language` order, then
    `replicate_of(reference)` from a second, independent accumulation of the reference language (default: the
    first). Training state (RNG, .grad, train/eval flag) is unchanged afterwards; the probe's own randomness
    (e.g. MLM masking in a collator) comes from `seed`."""
    languages = list(batches_by_language)
    reference = reference_language or languages[0]
    if reference not in batches_by_language:
        raise ValueError(
            f"reference_language={reference!r} has no batches; languages with batches: {languages}"
        )
    with preserved_rng_state(), eval_mode(model):
        seed_probe(seed)
        gradients = {}
        for language in [*languages, replicate_of(reference)]:
            source = batches_by_language[language.removesuffix(REPLICATE_SUFFIX)]
            gradients[language], _ = accumulated_gradient(model, gradient_index, source, target_sentences)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Each process measured its own batches: the full-batch gradient is the mean over processes.
            for flat in gradients.values():
                torch.distributed.all_reduce(flat)
                flat /= torch.distributed.get_world_size()
    return gradients


def pair_cosines(
    gradients: Mapping[str, torch.Tensor], gradient_index: SharedGradientIndex
) -> dict[str, dict[str, float]]:
    """{"a-b": segment cosines} for every pair of languages of `language_gradients`' result, in order, plus
    "<ref>-<ref>": the reference language against its replicate."""
    *languages, replicate = gradients
    reference = replicate.removesuffix(REPLICATE_SUFFIX)
    results = {
        f"{a}-{b}": segment_cosines(gradients[a], gradients[b], gradient_index)
        for a, b in itertools.combinations(languages, 2)
    }
    results[f"{reference}-{reference}"] = segment_cosines(gradients[reference], gradients[replicate], gradient_index)
    return results


def measure_gradient_conflict(
    model: nn.Module,
    batches_by_language: Mapping[str, Iterator[Mapping[str, torch.Tensor]]],
    target_sentences: int = 4096,
    reference_language: str | None = None,
    seed: int = 0,
    gradient_index: SharedGradientIndex | None = None,
) -> dict[str, dict[str, float]]:
    """Cosine similarity of the languages' shared-parameter gradients, per pair and segment.

    Returns {"en-sw": {"all": c, "layer.0": c, "layer.0.attention": c, ...}, ..., "en-en": {...}}: every pair of
    languages in `batches_by_language` order, plus "<ref>-<ref>" from two independent accumulated batches of
    `reference_language` (default: the first language). Training state (RNG, .grad, train/eval flag) is unchanged
    afterwards; the probe's own randomness (e.g. MLM masking in a collator) comes from `seed`.
    """
    gradient_index = gradient_index or shared_gradient_index(model)
    gradients = language_gradients(
        model, batches_by_language, target_sentences, reference_language, seed, gradient_index
    )
    return pair_cosines(gradients, gradient_index)


# ---------------------------------------------------------------------------------------------- matrix
def cosine_matrices(
    gradients: Mapping[str, torch.Tensor], gradient_index: SharedGradientIndex
) -> dict[str, np.ndarray]:
    """{segment: (n, n) cosines between every two of the n named gradients}, from one Gram matrix per parameter
    (so n gradients cost one pass, not n² passes). Row/column i is the i-th name of `gradients`; the diagonal
    compares a gradient with itself (1, or NaN where the segment's gradient is zero)."""
    stacked = torch.stack([flat.double() for flat in gradients.values()])  # (n, numel)
    grams = torch.stack(
        [chunk @ chunk.T for chunk in stacked.split(gradient_index.sizes, dim=1)]
    )  # (num_params, n, n)
    matrices = {}
    for segment, indices in gradient_index.segments.items():
        gram = grams[indices].sum(0)  # (n, n)
        norms = gram.diagonal().sqrt()
        matrices[segment] = (gram / torch.outer(norms, norms)).numpy()  # 0/0 = NaN, as segment_cosines
    return matrices


MATRIX_CSV_FIELDS = ["step", "segment", "language_a", "language_b", "cosine"]


def matrix_rows(step: int, names: list[str], matrices: Mapping[str, np.ndarray]) -> list[dict]:
    """The matrices as long rows, every ordered pair (language_a, language_b) of `names` per segment."""
    return [
        {"step": step, "segment": segment, "language_a": a, "language_b": b, "cosine": float(matrix[i, j])}
        for segment, matrix in matrices.items()
        for i, a in enumerate(names)
        for j, b in enumerate(names)
    ]


def endless(batches: Iterable[Mapping[str, torch.Tensor]]) -> Iterator[Mapping[str, torch.Tensor]]:
    """Cycle through a re-iterable (a DataLoader) forever, re-shuffling at each pass when it shuffles."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("the gradient-conflict batches are empty")


# ---------------------------------------------------------------------------------------------- logging
CSV_FIELDS = ["step", "pair", "segment", "cosine"]


def conflict_rows(step: int, results: Mapping[str, Mapping[str, float]]) -> list[dict]:
    return [
        {"step": step, "pair": pair, "segment": segment, "cosine": cosine}
        for pair, segments in results.items()
        for segment, cosine in segments.items()
    ]


class GradientConflictLog:
    """Appends measurements to gradient_conflict.csv and gradient_conflict.jsonl, and to TensorBoard
    (scalars "gradient_cosine/<pair>/<segment>") in `output_dir`."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.output_dir / "gradient_conflict.csv"
        self.jsonl_path = self.output_dir / "gradient_conflict.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))

    def write(self, step: int, results: Mapping[str, Mapping[str, float]]) -> None:
        new_file = not self.csv_path.exists()
        with self.csv_path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            if new_file:
                writer.writeheader()
            writer.writerows(conflict_rows(step, results))
        with self.jsonl_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "cosine": results}) + "\n")
        if self.writer is not None:
            for pair, segments in results.items():
                for segment, cosine in segments.items():
                    self.writer.add_scalar(f"gradient_cosine/{pair}/{segment}", cosine, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class GradientConflictCallback(TrainerCallback):
    """Measures gradient conflict every `every_n_steps` optimizer steps of a Trainer run (paper: 10 steps,
    4096 sentences per language) and logs it to `output_dir` (default: <args.output_dir>/gradient_conflict).

    `batches_by_language`: {lang: re-iterable of MLM batches} (e.g. one DataLoader per language over that
    language's blocks, with the MLM collator), separate from the training dataloader. Under multi-process
    training every process measures its own batches (give each `target_sentences / num_processes`) and the
    gradients are averaged; only the main process writes.

    Cost: the probe costs about as much per sentence as training (benchmarks/gradient_monitor.py: ratio 0.89 on
    CPU), so the paper's setting (every 10 steps, 4096 sentences per language, batch 512) more than triples the
    training time (~2.1x overhead). Recommended: every_n_steps=100, target_sentences=512 (~3% overhead).
    """

    def __init__(
        self,
        batches_by_language: Mapping[str, Iterable[Mapping[str, torch.Tensor]]],
        every_n_steps: int = 10,
        target_sentences: int = 4096,
        reference_language: str | None = None,
        output_dir: str | Path | None = None,
        tensorboard: bool = True,
        seed: int = 0,
    ):
        if every_n_steps < 1 or target_sentences < 1:
            raise ValueError(
                f"every_n_steps={every_n_steps} and target_sentences={target_sentences} must be >= 1"
            )
        self.batches = {language: endless(batches) for language, batches in batches_by_language.items()}
        self.every_n_steps = every_n_steps
        self.target_sentences = target_sentences
        self.reference_language = reference_language
        self.output_dir = output_dir
        self.tensorboard = tensorboard
        self.seed = seed
        self.log: GradientConflictLog | None = None
        self.gradient_index: SharedGradientIndex | None = None
        self.history: list[dict] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_n_steps != 0:
            return
        if model is None:
            raise ValueError("GradientConflictCallback needs the Trainer to pass `model` to its callbacks")
        model = getattr(model, "module", model)  # a DDP-wrapped model: measure the module itself
        self.gradient_index = self.gradient_index or shared_gradient_index(model)
        # The probe's randomness depends on the step only, so a resumed run measures the same batches' masks.
        results = measure_gradient_conflict(
            model,
            self.batches,
            self.target_sentences,
            self.reference_language,
            self.seed + state.global_step,
            self.gradient_index,
        )
        self.history.extend(conflict_rows(state.global_step, results))
        if state.is_world_process_zero:
            if self.log is None:
                self.log = GradientConflictLog(
                    self.output_dir or Path(args.output_dir) / "gradient_conflict", self.tensorboard
                )
            self.log.write(state.global_step, results)

    def on_train_end(self, args, state, control, **kwargs):
        if self.log is not None:
            self.log.close()


__all__ = [
    "GradientConflictCallback",
    "GradientConflictLog",
    "SharedGradientIndex",
    "accumulated_gradient",
    "cosine_matrices",
    "endless",
    "eval_mode",
    "language_gradients",
    "matrix_rows",
    "measure_gradient_conflict",
    "pair_cosines",
    "preserved_rng_state",
    "replicate_of",
    "segment_cosines",
    "shared_gradient_index",
]
