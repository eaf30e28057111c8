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

Optimizer steps (`meta_xlm.steps`)
----------------------------------
One object runs every optimizer step of a run, picked once at construction: `PlainStep` (the Trainer's own
forward/backward), `MetaStep` (`meta_learning=True`) or `LanguageBalancedStep` (surgery / loss weights).
`get_batch_samples` hands it the step's micro-batches (`begin`), `training_step` each micro-batch
(`micro_batch`); it also provides the step's logs and checkpoint state. φ (every language-specific parameter) is
kept out of DDP's reducer: the step objects sum φ's gradients across processes themselves, so an unused φ_j never
stalls DDP and `ddp_find_unused_parameters=False` (transformers' choice under activation checkpointing) works.
DeepSpeed and FSDP are refused with meta learning and language-balanced steps (they own the optimizer / shard the
parameters whose whole gradients these steps combine), and so is `torch_compile=True` with a hypergradient method
that differentiates twice.

One optimizer step with `meta_learning=True` (Algorithm 1; math in `meta_xlm.meta`)
----------------------------------------------------------------------------------
At the first micro-batch of the step, on the unwrapped model, over ALL micro-batches of the step (the Trainer
prefetches them; a step that starts without them raises): lookahead θ' = θ − β ∇_θ L_train^i (β = current θ
learning rate), meta objective over every language's meta-validation batch, hypergradient of φ_i (by default
`double_backward`: exact, differentiating the lookahead's θ-gradient once more); gradients are taken with
`torch.autograd.grad`, every loss is sum(CE) / its global label count and processes sum their shares, so the meta
step equals one process over the global batch whatever `average_tokens_across_devices` says. φ_i is clipped
(`max_grad_norm`) and updated by its own optimizer (the class `optim` / `optim_args` give, AdamW by default; rate
α = `meta_learning_rate`, its own schedule of the same type, stepped only when φ steps). A non-finite
hypergradient skips φ's update (`meta_skipped_updates` in the logs). Then θ's gradient (`theta_gradient`):
"lookahead" (default; the authors' code) takes the lookahead's ∇_θ L_train^i(θ, φ^t), already summed across
processes, and repeats no pass; "recompute" (Eq. 5) runs every micro-batch's forward/backward again through DDP
with the NEW φ_i, on the lookahead's dropout masks, φ frozen. The default costs one pass less and follows the en-sw
study rows (results/small_en_sw_converged: no difference beyond two spreads on any measure, 3 seeds). θ's optimizer
(which holds no language-specific parameter) then steps. Frozen parameters take no part (the trainable groups are
computed once, at construction). Logged with the loss:
`meta_loss` (the global M), `meta_higher_order_ratio` (‖β · higher-order‖ / ‖direct‖), `meta_skipped_updates`,
`meta_learning_rate`.

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

import contextlib
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.optimization import get_scheduler
from transformers.trainer_optimizer import is_optimizer_factory

from .meta import (
    DEFAULT_HYPERGRADIENT, HYPERGRADIENT_METHODS, MetaGradients, check_method, count_labels, higher_order_term,
    meta_step_gradients, trainable_parameter_groups,
)
from .lookahead import (
    LOOKAHEAD_KINDS, PreconditionedLookahead, SGDLookahead, adamw_states, full_precision, make_lookahead,
)
from .modeling_meta_xlm import ParameterGroups
from .sampling import LanguageBalancedBatchSampler, LanguageBatchSampler, lang_ids_of
from .steps import LanguageBalancedStep, MetaStep, PlainStep, meta_validation_batches, sampled_languages
from .surgery import (
    GRADIENT_SURGERY_METHODS,
    SURGERY_GRANULARITIES,
    LanguageGradients,
    check_surgery_arguments,
    parse_language_loss_weights,
)

logger = logging.getLogger(__name__)

THETA_GRADIENTS = ("recompute", "lookahead")


@dataclass
class MetaXLMTrainingArguments(TrainingArguments):
    meta_learning: bool = field(
        default=False, metadata={"help": "train language-specific parameters as meta-parameters (+meta adpt)"}
    )
    hypergradient: str = field(
        default=DEFAULT_HYPERGRADIENT,
        metadata={"help": f"one of {HYPERGRADIENT_METHODS}: double_backward (exact, through the lookahead's own "
                          "graph; accurate in bf16 at any size; the fastest exact method; holds every micro-batch's "
                          "graph of the step) / forward_over_reverse (exact, forward-mode AD, one micro-batch at a "
                          "time: memory flat in accumulation steps) / central_difference (Eq. 8, the paper's; "
                          "accurate on small models only) / forward_difference (Eq. 8 one-sided, one probe fewer, "
                          "O(ε) error) / first_order (higher-order term dropped); 'exact' and 'finite_difference' "
                          "are the older names of double_backward and central_difference"},
    )
    theta_gradient: str = field(
        default="lookahead",
        metadata={"help": f"one of {THETA_GRADIENTS}: θ's gradient in a meta step: recompute = ∇_θ L_train^i(θ, "
                          "φ^{t+1}) by another forward/backward pass with the new φ_i (Eq. 5) / lookahead = the "
                          "lookahead's ∇_θ L_train^i(θ, φ^t), no pass repeated (the authors' code)"},
    )
    meta_learning_rate: float | None = field(
        default=None, metadata={"help": "α, the φ learning rate; None = learning_rate (as in the paper)"}
    )
    fd_epsilon: float = field(default=0.01, metadata={"help": "finite-difference step: ε = fd_epsilon / ‖g‖"})
    lookahead: str = field(
        default="sgd",
        metadata={"help": f"one of {LOOKAHEAD_KINDS}: θ' of Eq. 3: sgd = θ − β g (the paper) / optimizer = the "
                          "step θ's own AdamW would take from its current state (moments, bias correction, weight "
                          "decay, lr); the higher-order term differentiates through that step"},
    )
    lookahead_lr: float | None = field(
        default=None,
        metadata={"help": "β of the lookahead (its lr for lookahead='optimizer'); None = θ's current learning rate "
                          "(the paper); 0 = no lookahead (θ' = θ, the higher-order term vanishes)"},
    )
    meta_languages_per_step: int | None = field(
        default=None,
        metadata={"help": "k: the meta objective reads language i plus k − 1 others sampled per step (seed, global "
                          "step), weighted so M and ∇_{φ_i} M are unbiased: cost constant in the number of languages "
                          "L; None = every language (the paper); k >= 2"},
    )
    meta_full_precision: bool = field(
        default=True,
        metadata={"help": "under bf16 autocast, run the meta objective's passes at θ' in float32 (autocast would "
                          "round θ' to θ); False = under autocast, as before issue 27"},
    )
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
        check_engine(self.own_steps, deepspeed=self.deepspeed, fsdp=self.fsdp)  # before the engines are set up
        if self.theta_gradient not in THETA_GRADIENTS:
            raise ValueError(f"theta_gradient={self.theta_gradient!r} is not one of {THETA_GRADIENTS}")
        check_method(self.hypergradient)
        if self.meta_learning and self.torch_compile and higher_order_term(self.hypergradient).differentiates_twice:
            raise ValueError(
                f"meta_learning=True with hypergradient={self.hypergradient!r} and torch_compile=True is not "
                "supported: that method differentiates a gradient again, and a torch.compile'd graph has no double "
                "backward; use hypergradient='central_difference', 'forward_difference' or 'first_order', or "
                "torch_compile=False"
            )
        super().__post_init__()
        check_surgery_arguments(self.gradient_surgery, self.surgery_granularity, self.gradvac_ema, self.meta_learning)
        weights = parse_language_loss_weights(self.language_loss_weights) or {}
        self.language_loss_weights = [f"{code}={weight}" for code, weight in weights.items()]  # a dict is fine too
        if self.fd_epsilon <= 0:
            raise ValueError(f"fd_epsilon must be > 0, got {self.fd_epsilon}")
        check_lookahead_arguments(self.lookahead, self.lookahead_lr, self.meta_languages_per_step)
        if self.meta_validation_batch_size is not None and self.meta_validation_batch_size < 1:
            raise ValueError(f"meta_validation_batch_size must be >= 1, got {self.meta_validation_batch_size}")

    @property
    def meta_lr(self) -> float:
        return self.learning_rate if self.meta_learning_rate is None else self.meta_learning_rate

    @property
    def language_balanced_steps(self) -> bool:
        """Every optimizer step holds every language, its gradients kept apart (surgery or loss weights)."""
        return self.gradient_surgery is not None or bool(self.language_loss_weights)

    @property
    def own_steps(self) -> str | None:
        """The setting whose optimizer step this trainer computes itself (None: the Trainer's plain step)."""
        if self.meta_learning:
            return "meta_learning=True"
        if self.gradient_surgery is not None:
            return f"gradient_surgery={self.gradient_surgery!r}"
        return "language_loss_weights" if self.language_loss_weights else None


def check_lookahead_arguments(kind: str, lookahead_lr: float | None, languages_per_step: int | None) -> None:
    if kind not in LOOKAHEAD_KINDS:
        raise ValueError(f"lookahead={kind!r} is not one of {LOOKAHEAD_KINDS}")
    if lookahead_lr is not None and not lookahead_lr >= 0:
        raise ValueError(f"lookahead_lr must be >= 0 or None (θ's learning rate), got {lookahead_lr}")
    if languages_per_step is not None and languages_per_step < 2:
        raise ValueError(
            f"meta_languages_per_step must be >= 2 (language i plus at least one other) or None (every language), "
            f"got {languages_per_step}"
        )


@contextlib.contextmanager
def full_precision_forward(model: torch.nn.Module, device_type: str):
    """`lookahead.full_precision`, and the model's own forward: accelerate wraps `model.forward` in an autocast of its
    own under mixed precision (keeping the original as `_original_forward`), which would turn autocast back on."""
    wrapped = model.__dict__.get("forward")
    original = getattr(model, "_original_forward", None)
    if wrapped is not None and original is not None:
        model.forward = original
    try:
        with full_precision(device_type):
            yield
    finally:
        if wrapped is not None and original is not None:
            model.forward = wrapped


def check_engine(own_steps: str | None, deepspeed=None, fsdp=None) -> None:
    """Meta learning and language-balanced steps take gradients with `torch.autograd.grad` on whole parameters and
    step φ with an optimizer of their own: an engine that shards parameters or owns the optimizer breaks that."""
    if own_steps is None:
        return
    if deepspeed:
        raise ValueError(
            f"{own_steps} is not supported with DeepSpeed (deepspeed={deepspeed!r}): DeepSpeed builds one optimizer "
            "over every trainable parameter (φ included) and never calls create_optimizer, so φ's own optimizer "
            "would not exist, and ZeRO partitions the gradients the meta step / surgery reads whole; use DDP"
        )
    if fsdp:
        raise ValueError(
            f"{own_steps} is not supported with FSDP (fsdp={fsdp!r}): the meta step and gradient surgery would see "
            "parameter shards and combine their gradients as if they were whole; use DDP"
        )


# accelerate builds FSDP only for accelerator processes: with `use_cpu` (its MULTI_CPU / NO distributed types) it
# drops the plugin, and the Trainer trains under DDP or one process without saying so.
IGNORED_FSDP = "fsdp=%r is ignored: accelerate runs FSDP on accelerators only, this run is %s (DDP or one process)"


def allow_a_compiled_graph_per_language(num_languages: int) -> None:
    """Under `torch_compile=True` a one-language step is routed by `single_language`, a Python string, so dynamo
    compiles one graph per language (guarded on the code), in training and in evaluation mode. Past
    `recompile_limit` (8 by default) it would run the remaining languages eagerly without a word."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * num_languages + 2)


class MetaLearningMixin:
    """What meta learning (`meta_learning=True`) adds to the Trainer: θ's optimizer without φ, φ's own optimizer
    and schedule, and the hypergradient of one optimizer step (`compute_meta_step`, which `MetaStep` calls). Mixed
    into `MetaXLMTrainer`, which sets `meta_groups`, `meta_optimizer`, `meta_lr_scheduler` and sums across processes
    (`_all_reduce_sum`); without meta learning every method is the Trainer's."""

    @property
    def meta_learning(self) -> bool:
        return isinstance(self.args, MetaXLMTrainingArguments) and self.args.meta_learning

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

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """θ's optimizer as the Trainer builds it, minus every language-specific parameter (meta_learning), plus
        φ's optimizer (`create_meta_optimizer`)."""
        optimizer = super().create_optimizer(model)
        if not self.meta_learning or self.meta_optimizer is not None:
            return optimizer
        language_ids = {id(p) for params in self.meta_groups.languages.values() for p in params.values()}
        for group in optimizer.param_groups:  # no step has run: the state is empty, so regrouping is safe
            group["params"] = [p for p in group["params"] if id(p) not in language_ids]
        if self.args.lookahead == "optimizer":  # refuse an optimizer it cannot reproduce now, not at the first step
            adamw_states(optimizer, self.meta_groups.shared)
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

    def _batch_language(self, batches: Sequence[Mapping[str, torch.Tensor]]) -> str:
        languages = self.accelerator.unwrap_model(model=self.model).config.languages
        for batch in batches:
            if "lang_ids" not in batch:
                raise ValueError(f"a training batch has no 'lang_ids' (keys: {sorted(batch)}); the meta step "
                                 "needs the language of every batch")
        ids = torch.cat([batch["lang_ids"].reshape(-1) for batch in batches]).unique().tolist()  # one host read
        if len(ids) != 1:
            raise ValueError(f"the meta step needs single-language optimizer steps, got languages "
                             f"{sorted(languages[i] for i in ids)}: train with LanguageBatchSampler")
        return languages[ids[0]]

    def _count_all(self, count: torch.Tensor) -> torch.Tensor:
        return self._all_reduce_sum(torch.as_tensor(count, device=self.args.device))

    def compute_meta_step(self, model, batches: list, val_batches: Mapping[str, Mapping[str, torch.Tensor]],
                          language: str, **options) -> MetaGradients:
        """The hypergradient of one optimizer step (`meta_step_gradients` on the unwrapped model, `options` passed
        on). One loss normalisation for every process layout and `average_tokens_across_devices` setting: every
        loss is sum(CE) / its global label count and processes sum their shares, so the result equals one process
        over the global batches."""
        unwrapped = self.accelerator.unwrap_model(model)
        unwrapped.train()
        options.setdefault("train_num_items", self._count_all(count_labels(batches)))
        lookahead = self.make_lookahead()
        with self.compute_loss_context_manager(), self.accelerator.autocast():
            return meta_step_gradients(
                unwrapped, batches, val_batches, language,
                lookahead_lr=lookahead.rate,
                lookahead=lookahead,
                objective_precision=self._objective_precision(unwrapped),
                method=self.args.hypergradient,
                fd_epsilon=self.args.fd_epsilon,
                val_num_items={code: self._count_all(count_labels([b])) for code, b in val_batches.items()},
                all_reduce_sum=self._all_reduce_sum,
                groups=self.meta_groups,
                keep_theta_gradient=self.args.theta_gradient == "lookahead",
                **options,
            )

    def make_lookahead(self) -> SGDLookahead | PreconditionedLookahead:
        """This step's θ' (Eq. 3, or θ's own AdamW step). Built during the step's first micro-batch: the scheduler has
        set the step's lr and θ's optimizer has not stepped, so its state and lr are those the θ step will use."""
        rate = self.args.lookahead_lr
        if self.args.lookahead == "sgd":  # β = θ's current learning rate unless lookahead_lr sets it (Eq. 3 and 5)
            return SGDLookahead(self._get_learning_rate() if rate is None else rate)
        return PreconditionedLookahead(make_lookahead("optimizer", rate, self.optimizer, self.meta_groups.shared))

    def _objective_precision(self, model):
        """float32 for the meta objective under bf16 autocast: autocast casts θ' to bf16 per matmul, which rounds
        the lookahead's shift (~β·g, 1e-8–1e-6 per weight) away, so M would be read at θ (`lookahead.full_precision`;
        about one float32 forward/backward instead of a bf16 one, for the meta objective's batches only)."""
        if self.args.meta_full_precision and self.accelerator.mixed_precision in ("bf16", "fp16"):
            return functools.partial(full_precision_forward, model, self.args.device.type)
        return contextlib.nullcontext


class MetaXLMTrainer(MetaLearningMixin, Trainer):
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
        self.meta_validation = None
        # trainable θ and φ, computed once (frozen parameters, e.g. embeddings, take no part in the meta step)
        unwrapped = self.accelerator.unwrap_model(self.model)
        self.meta_groups: ParameterGroups = trainable_parameter_groups(unwrapped)
        check_engine(self.args.own_steps if isinstance(self.args, MetaXLMTrainingArguments) else None,
                     deepspeed="accelerate's DeepSpeed plugin" if self.is_deepspeed_enabled else None,
                     fsdp="accelerate's FSDP plugin" if self.is_fsdp_enabled else None)
        # φ out of DDP's reducer, summed by the step objects; FSDP / DeepSpeed (plain steps only) reduce it themselves
        self.sums_language_gradients = self.args.world_size > 1 and not (self.is_fsdp_enabled or self.is_deepspeed_enabled)
        if self.sums_language_gradients:
            self._keep_language_parameters_out_of_ddp(unwrapped)
        self.optimizer_step = self._make_optimizer_step(meta_validation_datasets)
        if self.args.torch_compile:
            allow_a_compiled_graph_per_language(len(unwrapped.config.languages))
        if self.args.fsdp and not self.is_fsdp_enabled:
            logger.warning(IGNORED_FSDP, self.args.fsdp, self.accelerator.distributed_type)

    def _make_optimizer_step(self, meta_validation_datasets) -> PlainStep | MetaStep | LanguageBalancedStep:
        """The one object that runs every optimizer step of this run (`meta_xlm.steps`)."""
        if self.language_balanced_steps:
            return LanguageBalancedStep(self)
        language_params = {code: list(params.values()) for code, params in self.meta_groups.languages.items() if params}
        if not self.meta_learning:
            summed = [p for params in language_params.values() for p in params] if self.sums_language_gradients else []
            return PlainStep(self, summed)
        self._check_meta_setup()
        self.meta_validation = meta_validation_batches(self, meta_validation_datasets)
        k = self.args.meta_languages_per_step
        sampled = None if k is None else sampled_languages(k, self.args.seed)
        return MetaStep(self, self.compute_meta_step, language_params, meta_objective=sampled)

    def _keep_language_parameters_out_of_ddp(self, model) -> None:
        """φ never goes through DDP's reducer: each step object sums φ's gradients across processes itself (the
        meta step already does, the θ step freezes φ). DDP then never waits for an unused φ_j, so
        `ddp_find_unused_parameters=False` (transformers' choice under activation checkpointing) works. Must run
        before the model is wrapped (in `train`)."""
        names = [name for params in self.meta_groups.languages.values() for name in params]
        if names:
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)

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
            self.optimizer_step.prepare(sampler.codes)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    # ------------------------------------------------------------------------------------------------ steps
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batch_samples:
            self.optimizer_step.begin(batch_samples)  # every micro-batch of the step (the meta step needs them all)
        return batch_samples, num_items_in_batch

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """One micro-batch of the current optimizer step, run by the run's step object (`meta_xlm.steps`): plain,
        meta (Algorithm 1) or language-balanced. The Trainer then clips and steps θ's optimizer."""
        return self.optimizer_step.micro_batch(model, inputs, num_items_in_batch)

    def _all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="sum") if self.args.world_size > 1 else tensor

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: the step object's diagnostics since the last one
            logs.update(self.optimizer_step.logs())
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            self.optimizer_step.save(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.optimizer_step.load(checkpoint)

    @property
    def language_balanced_steps(self) -> bool:
        return isinstance(self.args, MetaXLMTrainingArguments) and self.args.language_balanced_steps

    @property
    def language_gradients(self) -> LanguageGradients | None:
        """The per-language gradient buffers of language-balanced steps (None before training / otherwise)."""
        return self.optimizer_step.language_gradients if isinstance(self.optimizer_step, LanguageBalancedStep) else None


__all__ = [
    "MetaXLMTrainer",
    "MetaXLMTrainingArguments",
]
