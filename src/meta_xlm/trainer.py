"""MetaXLMTrainer: transformers' Trainer plus the paper's bilevel meta-adapter step (Algorithm 1).

Data contract (what `meta_xlm.data` provides, what recipes pass in)
--------------------------------------------------------------------
- `train_dataset`: a map-style dataset (`datasets.Dataset` or torch `Dataset`) of examples with `input_ids`
  (list[int], one block) and `lang_ids` (int, index into `config.languages`), all languages in one dataset.
- `data_collator`: list of examples -> {input_ids (B, T), attention_mask (B, T), labels (B, T; -100 where not
  predicted), lang_ids (B,)}. It is used for training and for the meta validation batches.
- `language_sampling_probs`: {language code: probability}; uniform over the languages present when None.
- `meta_validation_datasets`: {language code: dataset of the same kind}, the meta-validation split (its own held-out
  text, not `eval_dataset`: φ is trained on it; `meta_xlm.data.hold_out_meta_validation`); required with
  `meta_learning=True`, for every language that has trainable language-specific parameters.

Sampling
--------
When `meta_learning=True` or `language_sampling_probs` is given, training batches come from
`meta_xlm.sampling.LanguageBatchSampler`: per optimizer step it draws one language (seeded generator, `seed` + epoch) and yields
`gradient_accumulation_steps × num_processes` batches of that language. accelerate's `BatchSamplerShard` hands
consecutive batches to consecutive ranks, so every rank and every micro-batch of one optimizer step sees the same
language, and the global batch of a step is one contiguous run of that language's shuffled examples (the same
examples whatever the number of processes or accumulation steps). The order depends only on (seed, epoch), so
the Trainer's batch skipping on resume reproduces it.

Validation batches for the meta objective are a deterministic function of (seed, language, global step):
`meta_xlm.sampling.MetaValidationBatches` cycles through seeded permutations of each language's validation set, independent of
the training sampler. Per language and device it takes `meta_validation_batch_size` examples (default: the
training examples per device of one optimizer step divided by the number of languages, rounded up: the same
global batch under any number of processes when that division is exact — set it explicitly otherwise); each rank takes its slice of the global validation batch
(so 2 processes × B equal 1 process × 2B), and collation runs under a
forked RNG seeded from the same triple, so masking does not depend on (or disturb) the training RNG stream.

One optimizer step with `meta_learning=True` (Algorithm 1; math in `meta_xlm.meta`), in `training_step`
------------------------------------------------------------------------------------------------------------
At the first micro-batch of the step, on the unwrapped model, over ALL micro-batches of the step (the Trainer
prefetches them; a step that starts without them raises): lookahead θ' = θ − β ∇_θ L_train^i (β = current θ
learning rate), meta objective over every language's meta-validation batch, hypergradient of φ_i (by default
exact, by differentiating the lookahead's θ-gradient once more); gradients are taken with `torch.autograd.grad`, every loss is sum(CE) / its global
label count and processes sum their shares, so the meta step equals one process over the global batch whatever
`average_tokens_across_devices` says. φ_i is clipped (`max_grad_norm`) and updated by its own optimizer (the
class `optim` / `optim_args` give, AdamW by default; rate α = `meta_learning_rate`, its own schedule of the same
type, stepped only when φ steps). A non-finite hypergradient skips φ's update (`meta_skipped_updates` in the
logs). Then every micro-batch runs the Trainer's ordinary forward/backward through DDP with the NEW φ_i (Eq. 5),
and θ's optimizer (which holds no language-specific parameter) steps. Frozen parameters take no part (the
trainable groups are computed once, at construction). Logged with the loss: `meta_loss` (the global M),
`meta_higher_order_ratio` (‖β · higher-order‖ / ‖direct‖), `meta_skipped_updates`, `meta_learning_rate`.

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
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.optimization import get_scheduler
from transformers.trainer_optimizer import is_optimizer_factory

from .meta import (
    DEFAULT_HYPERGRADIENT, HYPERGRADIENT_METHODS, MetaStep, check_method, count_labels, meta_step_gradients, trainable_parameter_groups,
)
from .modeling_meta_xlm import ParameterGroups
from .sampling import LanguageBalancedBatchSampler, LanguageBatchSampler, MetaValidationBatches, lang_ids_of
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
        default=DEFAULT_HYPERGRADIENT,
        metadata={"help": f"one of {HYPERGRADIENT_METHODS}: exact by double backward through the lookahead's own "
                          "graph (accurate in bf16 at any size; the fastest exact method; holds every micro-batch's "
                          "graph of the step) / exact by forward-mode AD (one micro-batch at a time: memory flat in "
                          "accumulation steps) / Eq. 8 central (the paper's; accurate on small models only) / Eq. 8 "
                          "one-sided (one probe fewer, O(ε) error) / higher-order term dropped"},
    )
    meta_learning_rate: float | None = field(
        default=None, metadata={"help": "α, the φ learning rate; None = learning_rate (as in the paper)"}
    )
    fd_epsilon: float = field(default=0.01, metadata={"help": "finite-difference step: ε = fd_epsilon / ‖g‖"})
    meta_validation_batch_size: int | None = field(
        default=None,
        metadata={"help": "validation examples per language per device in the meta objective; None = the "
                          "training examples per device of one optimizer step (batch × accumulation) / number of "
                          "languages, rounded up: the meta objective costs one training step's pass"},
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
        if self.meta_learning and self.fp16:
            raise ValueError(
                "meta_learning=True does not support fp16=True: the meta step's gradients bypass the GradScaler, so "
                "fp16 underflow would go unnoticed; use bf16=True (or float32)"
            )
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


def _global_norm(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors.values()]))


class MetaLogAccumulator:
    """Averages of the meta step's diagnostics between two logging steps, and the running count of skipped φ
    updates: `meta_loss` (the global M), `meta_higher_order_ratio` (‖β · higher-order‖ / ‖direct‖ of Eq. 4: how
    much the second-order term moves φ_i) and `meta_skipped_updates` (non-finite hypergradients, φ left as is)."""

    def __init__(self):
        self.meta_loss, self.ratio, self.count, self.skipped = 0.0, 0.0, 0, 0

    def add(self, step: MetaStep, skipped: bool) -> None:
        if skipped:
            self.skipped += 1
            return
        self.meta_loss += float(step.meta_loss)
        self.ratio += step.higher_order_ratio
        self.count += 1

    def pop(self) -> dict[str, float]:
        logs = {"meta_skipped_updates": self.skipped}
        if self.count:
            logs["meta_loss"] = round(self.meta_loss / self.count, 4)
            logs["meta_higher_order_ratio"] = self.ratio / self.count
        self.meta_loss, self.ratio, self.count = 0.0, 0.0, 0
        return logs


class MetaXLMTrainer(Trainer):
    """Trainer for every MetaXLM pretraining variant; `meta_learning=True` adds Algorithm 1's meta step.

    Args (beyond `Trainer`'s):
        language_sampling_probs: {language code: probability of a training step in that language}.
        meta_validation_datasets: {language code: held-out dataset} for the meta objective M — a split of its own,
            disjoint from the training and evaluation text (the meta objective trains φ on it).
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
        self._pending_step: list | None = None
        self._meta_updated_at_step: int | None = None
        self._meta_logs = MetaLogAccumulator()
        self.meta_validation = None
        self.meta_groups: ParameterGroups | None = None
        if self.meta_learning:
            self._check_meta_setup()
            # trainable θ and φ, computed once (frozen parameters, e.g. embeddings, take no part in the meta step)
            self.meta_groups = trainable_parameter_groups(self.accelerator.unwrap_model(self.model))
            self.meta_validation = self._build_meta_validation(meta_validation_datasets)
        self.language_gradients: LanguageGradients | None = None  # built with the training sampler
        self._surgery_cosines: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def meta_learning(self) -> bool:
        return isinstance(self.args, MetaXLMTrainingArguments) and self.args.meta_learning

    # ------------------------------------------------------------------------------------------------ setup
    def _check_meta_setup(self) -> None:
        if self.accelerator.mixed_precision == "fp16":
            raise ValueError(
                "meta_learning=True does not support fp16 mixed precision (accelerate mixed_precision='fp16'): the "
                "meta step's gradients bypass the GradScaler; use bf16"
            )
        if self.optimizer is not None or self.lr_scheduler is not None:
            raise ValueError(
                "meta_learning=True builds θ's optimizer (without φ) and φ's optimizer itself: pass `optim` / "
                "`optim_args` in the training arguments or `optimizer_cls_and_kwargs=`, not `optimizers=(...)`"
            )

    def _build_meta_validation(self, datasets: Mapping[str, object] | None) -> MetaValidationBatches:
        languages_with_params = [code for code, params in self.meta_groups.languages.items() if params]
        if not languages_with_params:
            raise ValueError(
                "meta_learning=True needs trainable language-specific parameters (config.language_modules="
                "'adapters' with shared_adapters=False, or 'ffn'/'attention'); this model has none"
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
            prepared, self.data_collator, self._meta_validation_batch_size(len(prepared)), self.args.seed,
            self.args.world_size, self.args.process_index,
        )

    def _meta_validation_batch_size(self, num_languages: int) -> int:
        if self.args.meta_validation_batch_size is not None:
            return self.args.meta_validation_batch_size
        # One optimizer step's training examples (per device) shared out over the languages: the meta objective
        # then costs one training step's forward/backward whatever the number of languages (one full batch per
        # language would cost L of them: 1.9 plain steps instead of 1.0 at L = 2, benchmarks/meta_step.py).
        step_examples = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        return max(1, math.ceil(step_examples / num_languages))

    def get_train_dataloader(self) -> DataLoader:
        if not self.meta_learning and self.language_sampling_probs is None and not self.language_balanced_steps:
            return super().get_train_dataloader()
        dataset = self.train_dataset
        if dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        lang_ids = lang_ids_of(dataset)
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
        φ's optimizer (`create_meta_optimizer`)."""
        optimizer = super().create_optimizer(model)
        if not self.meta_learning or self.meta_optimizer is not None:
            return optimizer
        language_ids = {id(p) for params in self.meta_groups.languages.values() for p in params.values()}
        for group in optimizer.param_groups:  # no step has run: the state is empty, so regrouping is safe
            group["params"] = [p for p in group["params"] if id(p) not in language_ids]
        self.meta_optimizer = self.create_meta_optimizer()
        return optimizer

    def create_meta_optimizer(self) -> torch.optim.Optimizer:
        """φ's optimizer: the class and settings `optim` / `optim_args` (or `optimizer_cls_and_kwargs`) give θ's,
        AdamW by default, with rate α = `meta_learning_rate` and weight decay as θ's parameter groups have it."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, unwrapped)
        if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
            raise ValueError(
                f"optim={self.args.optim!r} builds its own parameter set; meta_learning=True needs an optimizer "
                "class that takes parameter groups (e.g. adamw_torch, sgd, adafactor)"
            )
        decay_names = set(self.get_decay_parameter_names(unwrapped))
        named = [(n, p) for params in self.meta_groups.languages.values() for n, p in params.items()]
        groups = [
            {"params": [p for n, p in named if n in decay_names], "weight_decay": self.args.weight_decay},
            {"params": [p for n, p in named if n not in decay_names], "weight_decay": 0.0},
        ]
        return optimizer_cls(groups, **{**optimizer_kwargs, "lr": self.args.meta_lr})

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
            self._pending_step = batch_samples  # every micro-batch of the step, for the meta update
        return batch_samples, num_items_in_batch

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """+meta adpt (Algorithm 1): at the first micro-batch of an optimizer step, φ_i's meta update over the
        whole step's batch (lines 3-6); then every micro-batch runs θ's ordinary step with the new φ_i (line 7,
        Eq. 5), through DDP; the Trainer then steps θ's optimizer, which holds no φ."""
        if self.language_balanced_steps:
            return self._language_balanced_training_step(model, inputs, num_items_in_batch)
        if not self.meta_learning:
            return super().training_step(model, inputs, num_items_in_batch)
        step_batches = self._take_step_batches()  # None after the step's first micro-batch
        if step_batches is not None:
            self.meta_update(model, step_batches)  # lines 3-6: lookahead, meta objective, hypergradient, φ_i step
        loss = super().training_step(model, inputs, num_items_in_batch)  # line 7: ∇_θ L_train^i(θ, φ^{t+1})
        for params in self.meta_groups.languages.values():
            for param in params.values():
                param.grad = None  # φ is φ's optimizer's business: keep it out of θ's clipping norm
        return loss

    def _take_step_batches(self) -> list | None:
        """The micro-batches of the optimizer step about to run, once per step; raises when a step would run
        without its meta update (it would silently train +adpt with frozen adapters)."""
        batches, self._pending_step = self._pending_step, None
        if batches is None and self._meta_updated_at_step != self.state.global_step:
            raise RuntimeError(
                f"meta_learning=True: optimizer step {self.state.global_step} started without a meta update (the "
                "Trainer did not hand this step's batches to get_batch_samples); φ would not be trained"
            )
        if batches is not None:
            self._meta_updated_at_step = self.state.global_step
        return batches

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
        return self.accelerator.reduce(tensor, reduction="sum") if self.args.world_size > 1 else tensor

    def _count_all(self, count: torch.Tensor) -> torch.Tensor:
        return self._all_reduce_sum(torch.as_tensor(count, device=self.args.device))

    def meta_update(self, model, batches: list) -> MetaStep:
        """Algorithm 1 lines 3-6 for the optimizer step whose micro-batches are `batches`: update φ_i only, or
        skip (and count) the update when the hypergradient is not finite."""
        batches = [self._prepare_inputs(batch) for batch in batches]
        language = self._batch_language(batches)
        val_batches = {
            code: self._prepare_inputs(batch)
            for code, batch in self.meta_validation.batches(self.state.global_step).items()
        }
        step = self.compute_meta_step(model, batches, val_batches, language)
        finite = bool(torch.isfinite(_global_norm(step.hypergradient)))
        if finite:
            self._apply_meta_gradient(self.meta_groups.languages[language], step.hypergradient)
        self._meta_logs.add(step, skipped=not finite)
        return step

    def compute_meta_step(self, model, batches: list, val_batches: Mapping[str, Mapping[str, torch.Tensor]],
                          language: str) -> MetaStep:
        """The hypergradient of one optimizer step (`meta_step_gradients` on the unwrapped model). One loss
        normalisation for every process layout and `average_tokens_across_devices` setting: every loss is
        sum(CE) / its global label count and processes sum their shares, so the result equals one process over
        the global batches."""
        unwrapped = self.accelerator.unwrap_model(model)
        unwrapped.train()
        with self.compute_loss_context_manager(), self.accelerator.autocast():
            return meta_step_gradients(
                unwrapped, batches, val_batches, language,
                lookahead_lr=self._get_learning_rate(),  # β: the rate θ's own update will use (Eq. 3 and 5)
                method=self.args.hypergradient,
                fd_epsilon=self.args.fd_epsilon,
                train_num_items=self._count_all(count_labels(batches)),
                val_num_items={code: self._count_all(count_labels([b])) for code, b in val_batches.items()},
                all_reduce_sum=self._all_reduce_sum,
                groups=self.meta_groups,
            )

    def _apply_meta_gradient(self, params: Mapping[str, torch.nn.Parameter], grads: Mapping[str, torch.Tensor]):
        """φ_i ← GradientUpdate(φ_i, ∇_{φ_i} M) with rate α (Algorithm 1 line 6): only φ_i has a gradient, so the
        optimizer step leaves every other language's parameters and moments untouched. φ's scheduler steps with
        φ's optimizer: a skipped update skips both."""
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            scale = torch.clamp(self.args.max_grad_norm / (_global_norm(grads) + 1e-6), max=1.0)
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
        if self.meta_learning and "loss" in logs:
            logs.update(self._meta_logs.pop())
            logs["meta_learning_rate"] = self.meta_lr_scheduler.get_last_lr()[0]
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
    "MetaXLMTrainer",
    "MetaXLMTrainingArguments",
]
