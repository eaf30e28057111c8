"""MetaXLMTrainer: transformers' Trainer plus the paper's bilevel meta-adapter step (Algorithm 1).

Data contract (what `meta_xlm.data` provides, what recipes pass in)
--------------------------------------------------------------------
- `train_dataset`: a map-style dataset (`datasets.Dataset` or torch `Dataset`) of examples with `input_ids`
  (list[int], one block) and `lang_ids` (int, index into `config.languages`), all languages in one dataset.
- `data_collator`: list of examples -> {input_ids (B, T), attention_mask (B, T), labels (B, T; -100 where not
  predicted), lang_ids (B,)}. It is used for training and for the meta validation batches.
- `language_sampling_probs`: {language code: probability}; uniform over the languages present when None.
- `meta_validation_datasets`: {language code: dataset of the same kind}, the held-out split; required with
  `meta_learning=True`, for every language that has language-specific parameters.

Sampling
--------
When `meta_learning=True` or `language_sampling_probs` is given, training batches come from
`LanguageBatchSampler`: per optimizer step it draws one language (seeded generator, `seed` + epoch) and yields
`gradient_accumulation_steps × num_processes` batches of that language. accelerate's `BatchSamplerShard` hands
consecutive batches to consecutive ranks, so every rank and every micro-batch of one optimizer step sees the same
language, and the global batch of a step is one contiguous run of that language's shuffled examples (the same
examples whatever the number of processes or accumulation steps). The order depends only on (seed, epoch), so
the Trainer's batch skipping on resume reproduces it.

Validation batches for the meta objective are a deterministic function of (seed, language, global step):
`MetaValidationBatches` cycles through seeded permutations of each language's validation set, independent of
the training sampler. Per language and device it takes `meta_validation_batch_size` examples (default: the
training examples per device of one optimizer step); each rank takes its slice of the global validation batch
(so 2 processes × B equal 1 process × 2B), and collation runs under a
forked RNG seeded from the same triple, so masking does not depend on (or disturb) the training RNG stream.

One optimizer step with `meta_learning=True` (Algorithm 1; math in `meta_xlm.meta`)
-----------------------------------------------------------------------------------
At the first micro-batch of the step, on the unwrapped model, over ALL micro-batches of the step (the Trainer
prefetches them): lookahead θ' = θ − β ∇_θ L_train^i (β = current θ learning rate), meta objective over every
language's validation batch, hypergradient of φ_i; gradients are taken with `torch.autograd.grad` and summed
across processes explicitly. φ_i is clipped (`max_grad_norm`) and updated by its own AdamW (rate α =
`meta_learning_rate`, its own schedule of the same type). Then every micro-batch runs the Trainer's ordinary
forward/backward through DDP with the NEW φ_i (Eq. 5), and θ's optimizer (which holds no language-specific
parameter) steps. Gradient accumulation therefore gives the same update as one batch of the accumulated size:
the meta step sees the whole optimizer-step batch, normalised by its total label count.

Language-balanced steps (`gradient_surgery` or `language_loss_weights`; math in `meta_xlm.surgery`)
--------------------------------------------------------------------------------------------------
`LanguageBalancedBatchSampler` puts n_l ∝ p_l examples of every language in each optimizer step (the same global
examples whatever the processes and accumulation steps). Every micro-batch is split by language and each part's
loss (Σ CE / the step's global label count) is differentiated with `torch.autograd.grad` on the unwrapped model into
that language's buffer (`LanguageGradients`); DDP's backward never runs. At the step's last micro-batch the buffers
are all-reduced in place, θ's gradient is the method's combination (PCGrad / GradVac / weighted sum, the same on
every rank: same reduced buffers, same seeded random order), φ_l's is w_l × its own language's gradient; the
Trainer then clips and steps as usual. GradVac's EMA targets are saved with each checkpoint (`surgery_state.pt`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Sampler
from transformers import Trainer, TrainingArguments
from transformers.optimization import get_scheduler

from .meta import HYPERGRADIENT_METHODS, check_method, count_labels, meta_step_gradients
from .modeling_meta_xlm import parameter_groups
from .surgery import (
    GRADIENT_SURGERY_METHODS,
    SURGERY_GRANULARITIES,
    LanguageGradients,
    check_surgery_arguments,
    parse_language_loss_weights,
    split_by_language,
)

META_OPTIMIZER_NAME = "meta_optimizer.pt"
SURGERY_STATE_NAME = "surgery_state.pt"


@dataclass
class MetaXLMTrainingArguments(TrainingArguments):
    meta_learning: bool = field(
        default=False, metadata={"help": "train language-specific parameters as meta-parameters (+meta adpt)"}
    )
    hypergradient: str = field(
        default="finite_difference",
        metadata={"help": f"one of {HYPERGRADIENT_METHODS}: Eq. 8 central (the paper's) / Eq. 8 one-sided (one "
                          "probe fewer, O(ε) error) / exact / higher-order term dropped"},
    )
    meta_learning_rate: float | None = field(
        default=None, metadata={"help": "α, the φ learning rate; None = learning_rate (as in the paper)"}
    )
    fd_epsilon: float = field(default=0.01, metadata={"help": "finite-difference step: ε = fd_epsilon / ‖g‖"})
    meta_validation_batch_size: int | None = field(
        default=None,
        metadata={"help": "validation examples per language per device in the meta objective; None = the "
                          "training examples per device of one optimizer step (batch × accumulation)"},
    )

    gradient_surgery: str | None = field(
        default=None,
        metadata={"help": f"one of {GRADIENT_SURGERY_METHODS} or None: combine the languages' θ gradients of each "
                          "(language-balanced) optimizer step with PCGrad or GradVac"},
    )
    gradvac_ema: float = field(default=0.01, metadata={"help": "β of GradVac's EMA target cosines"})
    surgery_granularity: str = field(
        default="model",
        metadata={"help": f"one of {SURGERY_GRANULARITIES}: surgery on the whole θ, per layer, or per weight matrix"},
    )
    language_loss_weights: list[str] = field(
        default_factory=list,
        metadata={"help": "LANG=WEIGHT entries, one per language: fixed per-language loss weights (scalarization); "
                          "steps become language-balanced"},
    )

    def __post_init__(self):
        super().__post_init__()
        check_surgery_arguments(self.gradient_surgery, self.surgery_granularity, self.gradvac_ema, self.meta_learning)
        weights = parse_language_loss_weights(self.language_loss_weights) or {}
        self.language_loss_weights = [f"{code}={weight}" for code, weight in weights.items()]  # a dict is fine too
        check_method(self.hypergradient)
        if self.fd_epsilon <= 0:
            raise ValueError(f"fd_epsilon must be > 0, got {self.fd_epsilon}")
        if self.meta_validation_batch_size is not None and self.meta_validation_batch_size < 1:
            raise ValueError(f"meta_validation_batch_size must be >= 1, got {self.meta_validation_batch_size}")

    @property
    def meta_lr(self) -> float:
        return self.learning_rate if self.meta_learning_rate is None else self.meta_learning_rate

    @property
    def language_balanced_steps(self) -> bool:
        """Every optimizer step holds every language, its gradients kept apart (surgery or loss weights)."""
        return self.gradient_surgery is not None or bool(self.language_loss_weights)


def _lang_ids_of(dataset) -> list[int]:
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


class MetaXLMTrainer(Trainer):
    """Trainer for every MetaXLM pretraining variant; `meta_learning=True` adds Algorithm 1's meta step.

    Args (beyond `Trainer`'s):
        language_sampling_probs: {language code: probability of a training step in that language}.
        meta_validation_datasets: {language code: held-out dataset} for the meta objective M.
    """

    def __init__(
        self,
        *args,
        language_sampling_probs: Mapping[str, float] | None = None,
        meta_validation_datasets: Mapping[str, object] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.language_sampling_probs = language_sampling_probs
        self.meta_optimizer: torch.optim.Optimizer | None = None
        self.meta_lr_scheduler = None
        self._pending_step: tuple[list, torch.Tensor | int | None] | None = None
        self._meta_loss_total, self._meta_loss_count = 0.0, 0
        self.meta_validation = None
        if self.meta_learning:
            self.meta_validation = self._build_meta_validation(meta_validation_datasets)
        self.language_gradients: LanguageGradients | None = None  # built with the training sampler
        self._surgery_cosines: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def meta_learning(self) -> bool:
        return isinstance(self.args, MetaXLMTrainingArguments) and self.args.meta_learning

    # ------------------------------------------------------------------------------------------------ setup
    def _language_parameters(self) -> dict[str, dict[str, torch.nn.Parameter]]:
        return parameter_groups(self.accelerator.unwrap_model(self.model)).languages

    def _build_meta_validation(self, datasets: Mapping[str, object] | None) -> MetaValidationBatches:
        languages_with_params = [code for code, params in self._language_parameters().items() if params]
        if not languages_with_params:
            raise ValueError(
                "meta_learning=True needs language-specific parameters (config.language_modules='adapters' "
                "with shared_adapters=False, or 'ffn'/'attention'); this model has none"
            )
        if datasets is None:
            raise ValueError("meta_learning=True needs meta_validation_datasets={language: held-out dataset}")
        missing = [code for code in languages_with_params if code not in datasets]
        if missing:
            raise ValueError(
                f"meta_validation_datasets has no validation data for languages {missing} "
                f"(given: {sorted(datasets)}); the meta objective needs every language"
            )
        prepared = {}
        for code in languages_with_params:
            dataset = datasets[code]
            if hasattr(dataset, "column_names"):
                dataset = self._remove_unused_columns(dataset, description=f"meta validation ({code})")
            prepared[code] = dataset
        return MetaValidationBatches(
            prepared, self.data_collator, self._meta_validation_batch_size(), self.args.seed,
            self.args.world_size, self.args.process_index,
        )

    def _meta_validation_batch_size(self) -> int:
        if self.args.meta_validation_batch_size is not None:
            return self.args.meta_validation_batch_size
        # As many validation examples per language as training examples per optimizer step (per device).
        return self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps

    def get_train_dataloader(self) -> DataLoader:
        if not self.meta_learning and self.language_sampling_probs is None and not self.language_balanced_steps:
            return super().get_train_dataloader()
        dataset = self.train_dataset
        if dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        lang_ids = _lang_ids_of(dataset)
        if hasattr(dataset, "column_names"):
            dataset = self._remove_unused_columns(dataset, description="training")
        sampler_class = LanguageBalancedBatchSampler if self.language_balanced_steps else LanguageBatchSampler
        sampler = sampler_class(
            lang_ids,
            self.accelerator.unwrap_model(self.model).config.languages,
            self._train_batch_size,
            self.args.gradient_accumulation_steps * self.args.world_size,
            self.language_sampling_probs,
            self.args.seed,
        )
        if self.language_balanced_steps:
            self._prepare_language_gradients(sampler.codes)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """θ's optimizer as the Trainer builds it, minus every language-specific parameter (meta_learning), plus
        φ's own AdamW."""
        optimizer = super().create_optimizer(model)
        if not self.meta_learning or self.meta_optimizer is not None:
            return optimizer
        language_params = [p for params in self._language_parameters().values() for p in params.values()]
        language_ids = {id(p) for p in language_params}
        for group in optimizer.param_groups:  # no step has run: the state is empty, so regrouping is safe
            group["params"] = [p for p in group["params"] if id(p) not in language_ids]
        decay_names = set(self.get_decay_parameter_names(self.accelerator.unwrap_model(self.model)))
        named = [(n, p) for params in self._language_parameters().values() for n, p in params.items()]
        self.meta_optimizer = torch.optim.AdamW(
            [
                {"params": [p for n, p in named if n in decay_names], "weight_decay": self.args.weight_decay},
                {"params": [p for n, p in named if n not in decay_names], "weight_decay": 0.0},
            ],
            lr=self.args.meta_lr,
            betas=(self.args.adam_beta1, self.args.adam_beta2),
            eps=self.args.adam_epsilon,
        )
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        creating = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.meta_learning and creating:
            self.meta_lr_scheduler = get_scheduler(
                self.args.lr_scheduler_type,
                optimizer=self.meta_optimizer,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
            )
        return scheduler

    # ------------------------------------------------------------------------------------------------ steps
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.meta_learning and batch_samples:
            self._pending_step = (batch_samples, num_items_in_batch)
        return batch_samples, num_items_in_batch

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        if self.language_balanced_steps:
            return self._language_balanced_training_step(model, inputs, num_items_in_batch)
        if not self.meta_learning:
            return super().training_step(model, inputs, num_items_in_batch)
        if self._pending_step is not None:  # first micro-batch of an optimizer step
            batches, step_num_items = self._pending_step
            self._pending_step = None
            self.meta_update(model, batches, step_num_items)
        loss = super().training_step(model, inputs, num_items_in_batch)  # Eq. 5 with the new φ_i, through DDP
        for params in self._language_parameters().values():
            for param in params.values():
                param.grad = None  # φ is φ's optimizer's business: keep it out of θ's clipping norm
        return loss

    def _batch_language(self, batches: Sequence[Mapping[str, torch.Tensor]]) -> str:
        languages = self.accelerator.unwrap_model(model=self.model).config.languages
        ids = set()
        for batch in batches:
            if "lang_ids" not in batch:
                raise ValueError(f"a training batch has no 'lang_ids' (keys: {sorted(batch)}); the meta step "
                                 "needs the language of every batch")
            ids.update(int(i) for i in batch["lang_ids"].unique())
        if len(ids) != 1:
            raise ValueError(f"the meta step needs single-language optimizer steps, got languages "
                             f"{sorted(languages[i] for i in ids)}: train with LanguageBatchSampler")
        return languages[ids.pop()]

    def _all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.args.world_size <= 1:
            return tensor
        # Matches the θ path: with average_tokens_across_devices the loss is normalised by the global label
        # count, so per-process gradients add up; otherwise each process normalises locally and DDP averages.
        reduction = "sum" if self.args.average_tokens_across_devices else "mean"
        return self.accelerator.reduce(tensor, reduction=reduction)

    def meta_update(self, model, batches: list, num_items_in_batch) -> None:
        """Algorithm 1 lines 3-6 for the optimizer step whose micro-batches are `batches`: update φ_i only."""
        unwrapped = self.accelerator.unwrap_model(model)
        batches = [self._prepare_inputs(batch) for batch in batches]
        language = self._batch_language(batches)
        val_batches = {
            code: self._prepare_inputs(batch)
            for code, batch in self.meta_validation.batches(self.state.global_step).items()
        }
        val_num_items = {code: self._count_all(count_labels([b])) for code, b in val_batches.items()}
        train_num_items = num_items_in_batch
        if train_num_items is None:
            train_num_items = self._count_all(count_labels(batches))
        unwrapped.train()
        with self.compute_loss_context_manager(), self.accelerator.autocast():
            step = meta_step_gradients(
                unwrapped, batches, val_batches, language,
                lookahead_lr=self._get_learning_rate(),  # β: the rate θ's own update will use (Eq. 3 and 5)
                method=self.args.hypergradient,
                fd_epsilon=self.args.fd_epsilon,
                train_num_items=train_num_items,
                val_num_items=val_num_items,
                all_reduce_sum=self._all_reduce_sum,
            )
        self._apply_meta_gradient(parameter_groups(unwrapped).languages[language], step.hypergradient)
        self._meta_loss_total += float(step.meta_loss)
        self._meta_loss_count += 1

    def _count_all(self, count: torch.Tensor) -> torch.Tensor:
        count = torch.as_tensor(count, device=self.args.device)
        return self.accelerator.reduce(count, reduction="sum") if self.args.world_size > 1 else count

    def _apply_meta_gradient(self, params: Mapping[str, torch.nn.Parameter], grads: Mapping[str, torch.Tensor]):
        """φ_i ← GradientUpdate(φ_i, ∇_{φ_i} M) with rate α (Algorithm 1 line 6): only φ_i has a gradient, so the
        AdamW step leaves every other language's parameters and moments untouched."""
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads.values()]))
            scale = torch.clamp(self.args.max_grad_norm / (norm + 1e-6), max=1.0)
            grads = {name: g * scale for name, g in grads.items()}
        for name, param in params.items():
            param.grad = grads[name].to(param.dtype)
        self.meta_optimizer.step()
        for param in params.values():
            param.grad = None
        self.meta_lr_scheduler.step()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.language_balanced_steps and "loss" in logs:
            logs.update(self._surgery_cosine_logs())
        if self.meta_learning and self._meta_loss_count and "loss" in logs:
            logs["meta_loss"] = round(self._meta_loss_total / self._meta_loss_count, 4)
            logs["meta_learning_rate"] = self.meta_lr_scheduler.get_last_lr()[0]
            self._meta_loss_total, self._meta_loss_count = 0.0, 0
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        self._save_surgery_state(output_dir)
        if self.meta_learning and self.args.should_save:
            state = {"optimizer": self.meta_optimizer.state_dict(), "scheduler": self.meta_lr_scheduler.state_dict()}
            torch.save(state, os.path.join(output_dir, META_OPTIMIZER_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        self._load_surgery_state(checkpoint)
        if checkpoint is None or not self.meta_learning:
            return
        path = os.path.join(checkpoint, META_OPTIMIZER_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{path} is missing: cannot resume meta_learning=True without φ's optimizer state")
        state = torch.load(path, map_location=self.args.device, weights_only=True)
        self.meta_optimizer.load_state_dict(state["optimizer"])
        self.meta_lr_scheduler.load_state_dict(state["scheduler"])


    # ------------------------------------------------------------------------------------------------ surgery
    @property
    def language_balanced_steps(self) -> bool:
        return isinstance(self.args, MetaXLMTrainingArguments) and self.args.language_balanced_steps

    def _prepare_language_gradients(self, languages: Sequence[str]) -> None:
        """Per-language gradient buffers for the languages the sampler draws (kept when called again)."""
        if self.language_gradients is not None and self.language_gradients.languages == list(languages):
            return
        if self.args.gradient_surgery is not None and len(languages) < 2:
            raise ValueError(f"gradient_surgery={self.args.gradient_surgery!r} needs at least two languages with "
                             f"training examples and a sampling probability > 0, got {list(languages)}")
        weights = parse_language_loss_weights(self.args.language_loss_weights)
        if weights is not None and sorted(weights) != sorted(languages):
            raise ValueError(f"language_loss_weights names {sorted(weights)}; the languages trained are "
                             f"{list(languages)}: give one weight per language")
        self.language_gradients = LanguageGradients(
            self.accelerator.unwrap_model(self.model), languages, self.args.gradient_surgery,
            self.args.surgery_granularity, self.args.gradvac_ema, weights,
        )

    def _language_balanced_training_step(self, model, inputs, num_items_in_batch) -> torch.Tensor:
        """One micro-batch of a language-balanced step: each language's rows add to that language's gradient;
        the last micro-batch combines them (`LanguageGradients.finish`) into `.grad` for θ's optimizer.

        Language l's loss is Σ_{rows of l} CE / N (N: the step's label count, all micro-batches and processes),
        so the languages' losses add up to the plain step's loss, which is returned (unweighted) for logging."""
        if num_items_in_batch is None:
            raise ValueError("language-balanced steps need the step's label count (num_items_in_batch): the model's "
                             "forward must accept num_items_in_batch and the batches must have labels")
        unwrapped = self.accelerator.unwrap_model(model)
        unwrapped.train()
        inputs = self._prepare_inputs(inputs)
        losses = []
        for language_index, batch in split_by_language(inputs, len(unwrapped.config.languages)):
            with self.compute_loss_context_manager(), self.accelerator.autocast():
                loss = unwrapped(**batch, num_items_in_batch=num_items_in_batch).loss
            self.language_gradients.accumulate(language_index, loss)
            losses.append(loss.detach())
        total = torch.stack(losses).sum()
        if self.accelerator.sync_gradients:  # the step's last micro-batch
            generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + self.state.global_step)
            reduce = self._all_reduce_in_place if self.args.world_size > 1 else None
            self._surgery_cosines.append(self.language_gradients.finish(reduce, generator))
        if self.args.average_tokens_across_devices:
            total *= self.accelerator.num_processes  # what the Trainer's compute_loss reports, averaged in logs
        return total

    def _all_reduce_in_place(self, tensor: torch.Tensor) -> None:
        """Sum (average_tokens_across_devices: losses already normalised by the global label count) or average
        (as DDP does) across processes, in place: the per-language buffers are not copied."""
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        if not self.args.average_tokens_across_devices:
            tensor /= self.args.world_size

    def _surgery_cosine_logs(self) -> dict[str, float]:
        """Mean cosine, per language pair, of the θ gradients before and after surgery since the last log."""
        if not self._surgery_cosines:
            return {}
        before, after = (torch.stack(c).nanmean(0) for c in zip(*self._surgery_cosines))
        self._surgery_cosines = []
        languages = self.language_gradients.languages
        logs = {}
        for i, j in itertools.combinations(range(len(languages)), 2):
            pair = f"{languages[i]}-{languages[j]}"
            logs[f"surgery_cosine_before/{pair}"] = round(float(before[i, j]), 4)
            logs[f"surgery_cosine_after/{pair}"] = round(float(after[i, j]), 4)
        return logs

    def _save_surgery_state(self, output_dir: str) -> None:
        if self.language_gradients is not None and self.args.should_save:
            torch.save(self.language_gradients.state_dict(), os.path.join(output_dir, SURGERY_STATE_NAME))

    def _load_surgery_state(self, checkpoint: str | None) -> None:
        if checkpoint is None or self.language_gradients is None:
            return
        path = os.path.join(checkpoint, SURGERY_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{path} is missing: cannot resume language-balanced steps (gradient_surgery / "
                             "language_loss_weights) without their state (GradVac's EMA targets)")
        self.language_gradients.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


__all__ = [
    "LanguageBalancedBatchSampler",
    "LanguageBatchSampler",
    "MetaValidationBatches",
    "MetaXLMTrainer",
    "MetaXLMTrainingArguments",
]
