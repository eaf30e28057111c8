"""Which language each training step reads: the paper's sampling distribution p_i ∝ (L_i / Σ_j L_j)^(1/T), the batch
samplers that draw pretraining blocks by language (one language per optimizer step for the paper's models and the
meta step; every language in every step for gradient surgery), and the meta-validation batches of Algorithm 1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import Sampler


def language_sampling_probabilities(sizes: Mapping[str, int], temperature: float) -> dict[str, float]:
    """Paper Sec. 3.2: p_i ∝ (L_i / Σ_j L_j)^(1/T), L_i the corpus size of language i, T the temperature.

    T = 1 samples in proportion to corpus size; T → ∞ tends to uniform (XLM: T = 1/0.7).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not sizes or any(size <= 0 for size in sizes.values()):
        raise ValueError(f"every language needs a positive corpus size, got {dict(sizes)}")
    total = sum(sizes.values())
    weights = {language: (size / total) ** (1.0 / temperature) for language, size in sizes.items()}
    normaliser = sum(weights.values())
    return {language: weight / normaliser for language, weight in weights.items()}


def lang_ids_of(dataset) -> list[int]:
    """The language id of every example of a dataset (its `lang_ids` column)."""
    if hasattr(dataset, "column_names"):
        if "lang_ids" not in dataset.column_names:
            raise ValueError(f"the training dataset has no 'lang_ids' column (columns: {dataset.column_names})")
        return [int(i) for i in dataset["lang_ids"]]
    lang_ids = []
    for index in range(len(dataset)):
        example = dataset[index]
        if "lang_ids" not in example:
            raise ValueError(f"training example {index} has no 'lang_ids' (keys: {sorted(example)})")
        lang_ids.append(int(example["lang_ids"]))
    return lang_ids


class LanguageBatchSampler(Sampler[list[int]]):
    """Single-language batches: one language per optimizer step, `batches_per_step` batches of it.

    Args:
        lang_ids: the language id of every example of the dataset.
        languages: `config.languages` (the codes `lang_ids` index).
        batch_size: examples per batch (per device).
        batches_per_step: gradient_accumulation_steps × num_processes.
        probabilities: {code: p}; uniform over the languages present when None.
        seed: with the epoch, fixes the whole order.
    """

    drop_last = True  # every batch is full: accelerate's BatchSamplerShard need not wrap around

    def __init__(
        self,
        lang_ids: Sequence[int],
        languages: Sequence[str],
        batch_size: int,
        batches_per_step: int,
        probabilities: Mapping[str, float] | None,
        seed: int,
    ):
        self.batch_size = batch_size
        self.batches_per_step = batches_per_step
        self.seed = seed
        self.epoch = 0
        ids = torch.as_tensor(list(lang_ids), dtype=torch.long)
        self.indices = {code: (ids == k).nonzero().squeeze(1) for k, code in enumerate(languages)}
        self.indices = {code: idx for code, idx in self.indices.items() if len(idx) > 0}
        if probabilities is None:
            probabilities = {code: 1.0 for code in self.indices}
        unknown = sorted(set(probabilities) - set(languages))
        if unknown:
            raise ValueError(f"language_sampling_probs names {unknown}, not in config.languages={list(languages)}")
        empty = sorted(code for code, p in probabilities.items() if p > 0 and code not in self.indices)
        if empty:
            raise ValueError(f"language_sampling_probs gives languages {empty} a probability but they have no examples")
        self.codes = [code for code in languages if probabilities.get(code, 0) > 0]
        weights = torch.tensor([float(probabilities[code]) for code in self.codes], dtype=torch.float64)
        self.weights = weights / weights.sum()
        self.num_steps = len(ids) // (batch_size * batches_per_step)
        if self.num_steps == 0:
            raise ValueError(
                f"{len(ids)} training examples make no optimizer step of {batch_size} × {batches_per_step} examples"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_steps * self.batches_per_step

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        streams = {code: _cycled_permutation(idx, generator) for code, idx in self.indices.items()}
        step_size = self.batch_size * self.batches_per_step
        for _ in range(self.num_steps):
            code = self.codes[int(torch.multinomial(self.weights, 1, generator=generator))]
            block = [next(streams[code]) for _ in range(step_size)]
            for start in range(0, step_size, self.batch_size):
                yield block[start : start + self.batch_size]


class LanguageBalancedBatchSampler(LanguageBatchSampler):
    """Every optimizer step holds every language: n_l examples of language l, n_l ∝ p_l (at least 1).

    The step's `batch_size × batches_per_step` examples are drawn language by language (in `config.languages`
    order, each language from its own seeded stream) and cut into `batches_per_step` batches; a batch that straddles
    two languages is split by the trainer. The step's examples do not depend on how they are cut, so processes and
    accumulation steps see the same global batch. Same arguments as `LanguageBatchSampler`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        step_size = self.batch_size * self.batches_per_step
        if step_size < len(self.codes):
            raise ValueError(f"an optimizer step of {step_size} examples cannot hold one example of each of the "
                             f"{len(self.codes)} languages {self.codes}")
        self.counts = _largest_remainder(self.weights, step_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        streams = {code: _cycled_permutation(idx, generator) for code, idx in self.indices.items()}
        for _ in range(self.num_steps):
            block = [next(streams[code]) for code, count in zip(self.codes, self.counts) for _ in range(count)]
            for start in range(0, len(block), self.batch_size):
                yield block[start : start + self.batch_size]


def _largest_remainder(probabilities: torch.Tensor, total: int) -> list[int]:
    """Integer counts ≥ 1 summing to `total`, proportional to `probabilities` (largest-remainder rounding)."""
    spare = total - len(probabilities)
    shares = probabilities * spare
    counts = shares.floor()
    leftover = spare - int(counts.sum())
    counts[torch.argsort(shares - counts, descending=True, stable=True)[:leftover]] += 1
    return [1 + int(c) for c in counts]


def _cycled_permutation(indices: torch.Tensor, generator: torch.Generator):
    while True:
        yield from indices[torch.randperm(len(indices), generator=generator)].tolist()


class MetaValidationBatches:
    """Validation batch of every language at every optimizer step, a pure function of (seed, language, step).

    The global batch of `batch_size × num_processes` examples is position `step` of a stream of seeded
    permutations (one per pass over the language's validation set); process r takes rows [r·B, (r+1)·B).
    """

    def __init__(self, datasets: Mapping[str, object], collator, batch_size: int, seed: int,
                 num_processes: int = 1, process_index: int = 0):
        empty = sorted(code for code, dataset in datasets.items() if len(dataset) == 0)
        if empty:
            raise ValueError(f"meta_validation_datasets has empty datasets for {empty}")
        self.datasets, self.collator, self.batch_size, self.seed = dict(datasets), collator, batch_size, seed
        self.num_processes, self.process_index = num_processes, process_index
        self._permutations: dict[tuple[str, int], list[int]] = {}

    def _permutation(self, code: str, language_index: int, epoch: int) -> list[int]:
        key = (code, epoch)
        if key not in self._permutations:
            if len(self._permutations) > 4 * len(self.datasets):
                self._permutations.clear()
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * language_index + epoch)
            self._permutations[key] = torch.randperm(len(self.datasets[code]), generator=generator).tolist()
        return self._permutations[key]

    def indices(self, code: str, step: int) -> list[int]:
        language_index = list(self.datasets).index(code)
        size = len(self.datasets[code])
        global_size = self.batch_size * self.num_processes
        first = step * global_size + self.process_index * self.batch_size
        positions = range(first, first + self.batch_size)
        return [self._permutation(code, language_index, p // size)[p % size] for p in positions]

    def batch(self, code: str, step: int) -> dict[str, torch.Tensor]:
        dataset = self.datasets[code]
        examples = [dataset[i] for i in self.indices(code, step)]
        language_index = list(self.datasets).index(code)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + 104_729 * (language_index + 1) + step)
            return self.collator(examples)

    def batches(self, step: int) -> dict[str, dict[str, torch.Tensor]]:
        return {code: self.batch(code, step) for code in self.datasets}


__all__ = [
    "LanguageBalancedBatchSampler",
    "LanguageBatchSampler",
    "MetaValidationBatches",
    "lang_ids_of",
    "language_sampling_probabilities",
]
