"""One object per kind of optimizer step of `MetaXLMTrainer`: plain, meta (Algorithm 1), language-balanced.

The Trainer prefetches the micro-batches of each optimizer step (`get_batch_samples`) and then calls
`training_step` once per micro-batch. The trainer hands both to its step object: `begin(micro_batches)` once per
optimizer step, `micro_batch(model, inputs, num_items_in_batch)` per micro-batch (returns the loss to log). The
Trainer then clips and steps θ's optimizer as usual.

φ (the language-specific parameters) is kept out of DDP's reducer (`MetaXLMTrainer` marks it ignored before the
model is wrapped): each step sums φ's gradients across processes itself, so DDP never sees an unused φ_j and
`ddp_find_unused_parameters=False` (what transformers picks with activation checkpointing) works.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Iterator, Mapping, Sequence

import torch
from transformers import Trainer

from .lookahead import sample_meta_languages
from .meta import MetaGradients, uniform_meta_objective
from .passes import count_labels, norm, same_masks
from .sampling import MetaValidationBatches
from .surgery import LanguageGradients, parse_language_loss_weights, split_by_language

META_OPTIMIZER_NAME = "meta_optimizer.pt"
SURGERY_STATE_NAME = "surgery_state.pt"


@contextlib.contextmanager
def frozen(params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """requires_grad off for `params` while a backward runs: no gradient is computed for them at all."""
    for param in params:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in params:
            param.requires_grad_(True)


def sum_across_processes(params: Sequence[torch.nn.Parameter], world_size: int) -> None:
    """φ's `.grad` averaged across processes as DDP would (sum / world size), in one collective. A parameter
    without a gradient on every process keeps `.grad = None` (an unused φ_j is not updated); one with a gradient on
    some process gets the average, zeros standing in elsewhere."""
    flags = torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype, device=params[0].device)
    flat = torch.cat([flags] + [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params])
    torch.distributed.all_reduce(flat)
    flags, *parts = flat.split([len(params)] + [p.numel() for p in params])
    for param, part, used in zip(params, parts, flags.gt(0).tolist()):  # one host read for all of φ
        if used:
            param.grad = (part / world_size).view_as(param).to(param.dtype)


class MetaLogAccumulator:
    """Averages of the meta step's diagnostics between two logging steps, and the running count of skipped φ
    updates: `meta_loss` (the global M), `meta_higher_order_ratio` (‖β · higher-order‖ / ‖direct‖ of Eq. 4: how
    much the second-order term moves φ_i), `meta_skipped_updates` (non-finite hypergradients, φ left as is),
    `meta_objective_languages` (languages the meta objective read per step) and, when measured (logging steps),
    `meta_lookahead_share` (‖∂M/∂φ_i(θ') − ∂M/∂φ_i(θ)‖ / ‖∂M/∂φ_i(θ')‖: what the lookahead changes in Eq. 4's
    direct term). Sums stay tensors until `pop` (logging time): no host read per step."""

    def __init__(self):
        self.meta_loss, self.ratio, self.count, self.skipped = 0.0, 0.0, 0, 0
        self.languages, self.shares = 0, []

    def add(self, step: MetaGradients, skipped: bool, num_languages: int) -> None:
        if skipped:
            self.skipped += 1
            return
        self.meta_loss = self.meta_loss + step.meta_loss.detach()
        self.ratio = self.ratio + step.higher_order_share.detach()
        self.count += 1
        self.languages += num_languages
        if step.lookahead_share is not None:
            self.shares.append(step.lookahead_share)

    def pop(self) -> dict[str, float]:
        logs = {"meta_skipped_updates": self.skipped}
        if self.count:
            logs["meta_loss"] = round(float(self.meta_loss) / self.count, 4)
            logs["meta_higher_order_ratio"] = float(self.ratio) / self.count
            logs["meta_objective_languages"] = self.languages / self.count
        if self.shares:
            logs["meta_lookahead_share"] = sum(self.shares) / len(self.shares)
        self.meta_loss, self.ratio, self.count, self.languages, self.shares = 0.0, 0.0, 0, 0, []
        return logs


class PlainStep:
    """+adpt, JointPair, …: the Trainer's own forward/backward (through DDP for θ), then φ's gradients summed
    across processes at the step's last micro-batch (`language_params`: the φ kept out of DDP's reducer; empty in
    one process and under FSDP / DeepSpeed, which reduce every gradient themselves)."""

    def __init__(self, trainer, language_params: Sequence[torch.nn.Parameter]):
        self.trainer = trainer
        self.language_params = list(language_params)

    def begin(self, micro_batches: list) -> None:
        pass

    def logs(self) -> dict[str, float]:
        return {}

    def save(self, output_dir: str) -> None:
        pass

    def load(self, checkpoint: str) -> None:
        pass

    def micro_batch(self, model, inputs, num_items_in_batch) -> torch.Tensor:
        loss = Trainer.training_step(self.trainer, model, inputs, num_items_in_batch)  # the Trainer's own step
        trainer = self.trainer
        if self.language_params and trainer.accelerator.sync_gradients:  # the step's last micro-batch
            sum_across_processes(self.language_params, trainer.args.world_size)
        return loss


class LanguageBalancedStep:
    """Every language in every step, each language's gradient kept apart (`LanguageGradients`), combined at the
    step's last micro-batch by gradient surgery or fixed loss weights; DDP's backward never runs. GradVac's EMA
    targets are saved with each checkpoint (`surgery_state.pt`)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.language_gradients: LanguageGradients | None = None  # built with the training sampler (`prepare`)
        self._cosines: list[tuple[torch.Tensor, torch.Tensor]] = []

    def prepare(self, languages: Sequence[str]) -> None:
        """Per-language gradient buffers for the languages the sampler draws (kept when called again)."""
        args = self.trainer.args
        if self.language_gradients is not None and self.language_gradients.languages == list(languages):
            return
        if args.gradient_surgery is not None and len(languages) < 2:
            raise ValueError(f"gradient_surgery={args.gradient_surgery!r} needs at least two languages with "
                             f"training examples and a sampling probability > 0, got {list(languages)}")
        weights = parse_language_loss_weights(args.language_loss_weights)
        if weights is not None and sorted(weights) != sorted(languages):
            raise ValueError(f"language_loss_weights names {sorted(weights)}; the languages trained are "
                             f"{list(languages)}: give one weight per language")
        self.language_gradients = LanguageGradients(
            self.trainer.accelerator.unwrap_model(self.trainer.model), languages, args.gradient_surgery,
            args.surgery_granularity, args.gradvac_ema, weights,
        )

    def begin(self, micro_batches: list) -> None:
        pass

    def logs(self) -> dict[str, float]:
        """Mean cosine, per language pair, of the θ gradients before and after surgery since the last log."""
        if not self._cosines:
            return {}
        before, after = (torch.stack(c).nanmean(0) for c in zip(*self._cosines))
        self._cosines = []
        languages = self.language_gradients.languages
        logs = {}
        for i, j in itertools.combinations(range(len(languages)), 2):
            pair = f"{languages[i]}-{languages[j]}"
            logs[f"surgery_cosine_before/{pair}"] = round(float(before[i, j]), 4)
            logs[f"surgery_cosine_after/{pair}"] = round(float(after[i, j]), 4)
        return logs

    def save(self, output_dir: str) -> None:
        if self.language_gradients is not None:
            torch.save(self.language_gradients.state_dict(), os.path.join(output_dir, SURGERY_STATE_NAME))

    def load(self, checkpoint: str) -> None:
        if self.language_gradients is None:
            return
        path = os.path.join(checkpoint, SURGERY_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{path} is missing: cannot resume language-balanced steps (gradient_surgery / "
                             "language_loss_weights) without their state (GradVac's EMA targets)")
        self.language_gradients.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def _all_reduce_in_place(self, tensor: torch.Tensor) -> None:
        """Sum (average_tokens_across_devices: losses already normalised by the global label count) or average
        (as DDP does) across processes, in place: the per-language buffers are not copied."""
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        if not self.trainer.args.average_tokens_across_devices:
            tensor /= self.trainer.args.world_size

    def micro_batch(self, model, inputs, num_items_in_batch) -> torch.Tensor:
        """Language l's loss is Σ_{rows of l} CE / N (N: the step's label count, all micro-batches and processes),
        so the languages' losses add up to the plain step's loss, which is returned (unweighted) for logging."""
        trainer = self.trainer
        if num_items_in_batch is None:
            raise ValueError("language-balanced steps need the step's label count (num_items_in_batch): the model's "
                             "forward must accept num_items_in_batch and the batches must have labels")
        unwrapped = trainer.accelerator.unwrap_model(model)
        unwrapped.train()
        inputs = trainer._prepare_inputs(inputs)
        losses = []
        for language_index, batch in split_by_language(inputs, len(unwrapped.config.languages)):
            with trainer.compute_loss_context_manager(), trainer.accelerator.autocast():
                loss = unwrapped(**batch, num_items_in_batch=num_items_in_batch).loss
            self.language_gradients.accumulate(language_index, loss)
            losses.append(loss.detach())
        total = torch.stack(losses).sum()
        if trainer.accelerator.sync_gradients:  # the step's last micro-batch
            generator = torch.Generator().manual_seed(trainer.args.seed * 1_000_003 + trainer.state.global_step)
            reduce = self._all_reduce_in_place if trainer.args.world_size > 1 else None
            self._cosines.append(self.language_gradients.finish(reduce, generator))
        if trainer.args.average_tokens_across_devices:
            total *= trainer.accelerator.num_processes  # what the Trainer's compute_loss reports, averaged in logs
        return total


def meta_validation_batches(trainer, datasets: Mapping[str, object] | None) -> MetaValidationBatches:
    """The meta objective's validation batches (`MetaValidationBatches`) from {language: held-out dataset}."""
    languages_with_params = [code for code, params in trainer.meta_groups.languages.items() if params]
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
            dataset = trainer._remove_unused_columns(dataset, description=f"meta validation ({code})")
        prepared[code] = dataset
    return MetaValidationBatches(
        prepared, trainer.data_collator, _meta_validation_batch_size(trainer.args, objective_size(trainer.args, len(prepared))),
        trainer.args.seed, trainer.args.world_size, trainer.args.process_index,
    )


def objective_size(args, num_languages: int) -> int:
    """Languages the meta objective reads per step: k (`meta_languages_per_step`) of L, or all L."""
    k = getattr(args, "meta_languages_per_step", None)
    return num_languages if k is None else min(k, num_languages)


def _meta_validation_batch_size(args, num_languages: int) -> int:
    if args.meta_validation_batch_size is not None:
        return args.meta_validation_batch_size
    # One optimizer step's training examples (per device) shared out over the languages: the meta objective
    # then costs one training step's forward/backward whatever the number of languages (one full batch per
    # language would cost L of them: 1.9 plain steps instead of 1.0 at L = 2, benchmarks/meta_step.py).
    step_examples = args.per_device_train_batch_size * args.gradient_accumulation_steps
    return max(1, math.ceil(step_examples / num_languages))


def every_language(languages: Sequence[str], language: str, step: int) -> dict[str, float]:
    """The paper's meta objective at every step: all languages, weight 1/L each (Eq. 2), whatever language i and
    step (a sampled objective, e.g. `lookahead.sample_meta_languages`, uses both)."""
    return uniform_meta_objective(languages)


def sampled_languages(k: int, seed: int):
    """The meta objective over language i plus k − 1 others drawn from (seed, step): the same on every process and
    after a resume, weighted so that M and its gradients are unbiased (`lookahead.sample_meta_languages`)."""

    def objective(languages: Sequence[str], language: str, step: int) -> dict[str, float]:
        return sample_meta_languages(languages, language, k, seed, step)

    return objective


class MetaStep:
    """Algorithm 1 for one optimizer step, over all its micro-batches (Eqs. 3-5):

        lookahead, meta objective, hypergradient (`compute`: `MetaXLMTrainer.compute_meta_step`, i.e.
        `meta.meta_step_gradients`) → φ_i step (line 6) → θ step (line 7):
          theta_gradient="recompute": each micro-batch's forward/backward again, through DDP, with the NEW φ_i
            (Eq. 5), on the same dropout masks as the lookahead, φ frozen (its gradient is not computed);
          theta_gradient="lookahead": θ's gradient is the lookahead's ∇_θ L_train^i(θ, φ_i^t), already summed across
            processes (the authors' code steps θ with φ^t); no pass is repeated.

    `meta_objective` maps (languages with trainable φ, the step's language i, global step) to the meta objective's
    {language: weight}: the seam for a sampled meta objective. The lookahead is the other seam
    (`meta_step_gradients(lookahead=)`, passed through `compute`)."""

    def __init__(self, trainer, compute, language_params: Mapping[str, Sequence[torch.nn.Parameter]],
                 meta_objective=None):
        self.trainer = trainer
        self.compute = compute
        self.language_params = language_params  # {code: [φ_code parameters]}
        self._all_phi = [p for params in language_params.values() for p in params]
        self.meta_objective = meta_objective or every_language
        self._pending: list | None = None
        self._updated_at_step: int | None = None
        self._seeds: list[int] = []
        self._train_losses: list[torch.Tensor] = []
        self._index = 0
        self._num_items: torch.Tensor | int = 0
        self.log_accumulator = MetaLogAccumulator()

    def begin(self, micro_batches: list) -> None:
        self._pending = micro_batches

    def logs(self) -> dict[str, float]:
        return {**self.log_accumulator.pop(), "meta_learning_rate": self.trainer.meta_lr_scheduler.get_last_lr()[0]}

    def save(self, output_dir: str) -> None:
        trainer = self.trainer
        state = {"optimizer": trainer.meta_optimizer.state_dict(), "scheduler": trainer.meta_lr_scheduler.state_dict()}
        torch.save(state, os.path.join(output_dir, META_OPTIMIZER_NAME))

    def load(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, META_OPTIMIZER_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{path} is missing: cannot resume meta_learning=True without φ's optimizer state")
        state = torch.load(path, map_location=self.trainer.args.device, weights_only=True)
        self.trainer.meta_optimizer.load_state_dict(state["optimizer"])
        self.trainer.meta_lr_scheduler.load_state_dict(state["scheduler"])

    def micro_batch(self, model, inputs, num_items_in_batch) -> torch.Tensor:
        trainer = self.trainer
        if self._pending is not None:
            self.bilevel_update(model, self._pending)
            self._pending, self._index = None, 0
            self._updated_at_step = trainer.state.global_step
        elif self._updated_at_step != trainer.state.global_step:
            raise RuntimeError(
                f"meta_learning=True: optimizer step {trainer.state.global_step} started without a meta update (the "
                "Trainer did not hand this step's batches to get_batch_samples); φ would not be trained")
        index, self._index = self._index, self._index + 1
        if trainer.args.theta_gradient == "lookahead":
            return self._reported_loss(self._train_losses[index], num_items_in_batch)
        # line 7, Eq. 5: ∇_θ L_train^i(θ, φ^{t+1}) through DDP, same masks as the lookahead's pass, φ frozen
        unwrapped = trainer.accelerator.unwrap_model(model)
        unwrapped.train()
        with same_masks(unwrapped, self._seeds[index], trainer.args.device), frozen(self._all_phi):
            return Trainer.training_step(trainer, model, inputs, num_items_in_batch)

    def bilevel_update(self, model, batches: list) -> MetaGradients:
        """Lines 3-6 over the step's micro-batches; with theta_gradient="lookahead", θ's gradient too."""
        trainer = self.trainer
        batches = [trainer._prepare_inputs(batch) for batch in batches]
        language = trainer._batch_language(batches)
        step = trainer.state.global_step
        weights = self.meta_objective(list(self.language_params), language, step)
        val_batches = {code: trainer._prepare_inputs(trainer.meta_validation.batch(code, step)) for code in weights}
        self._num_items = trainer._count_all(count_labels(batches))
        self._seeds = torch.randint(2**62, (len(batches),)).tolist()  # one dropout realisation per micro-batch
        val_seeds = dict(zip(weights, torch.randint(2**62, (len(weights),)).tolist()))
        gradients = self.compute(model, batches, val_batches, language, seeds=self._seeds, val_seeds=val_seeds,
                                 meta_weights=weights, train_num_items=self._num_items,
                                 measure_lookahead_share=self._logs_after(step))
        self._step_phi(language, gradients, len(weights))
        self._train_losses = gradients.train_losses
        if trainer.args.theta_gradient == "lookahead":
            unwrapped = trainer.accelerator.unwrap_model(model)
            for name, g in gradients.theta_gradient.items():
                param = unwrapped.get_parameter(name)
                param.grad = g.to(param.dtype)
        return gradients

    def _logs_after(self, step: int) -> bool:
        """Whether the Trainer logs after this step (the lookahead share costs a pass: measured then only)."""
        every = self.trainer.state.logging_steps or self.trainer.args.logging_steps
        return self.trainer.args.logging_strategy == "steps" and every > 0 and (step + 1) % every == 0

    def _step_phi(self, language: str, gradients: MetaGradients, num_languages: int) -> None:
        """φ_i ← GradientUpdate(φ_i, ∇_{φ_i} M) with rate α (Algorithm 1 line 6), clipped to `max_grad_norm`: only
        φ_i has a gradient, so every other language's parameters and moments stay as they are. A non-finite
        hypergradient skips the update and φ's scheduler (the one host read of the meta step)."""
        trainer = self.trainer
        total_norm = norm(gradients.hypergradient)
        finite = bool(torch.isfinite(total_norm))
        self.log_accumulator.add(gradients, skipped=not finite, num_languages=num_languages)
        if not finite:
            return
        grads = gradients.hypergradient
        if trainer.args.max_grad_norm and trainer.args.max_grad_norm > 0:
            scale = torch.clamp(trainer.args.max_grad_norm / (total_norm + 1e-6), max=1.0)
            grads = dict(zip(grads, torch._foreach_mul(list(grads.values()), scale)))
        params = trainer.meta_groups.languages[language]
        for name, param in params.items():
            param.grad = grads[name].to(param.dtype)
        trainer.meta_optimizer.step()
        for param in params.values():
            param.grad = None
        trainer.meta_lr_scheduler.step()

    def _reported_loss(self, loss: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """What the Trainer's own step would log for this micro-batch. The loss share is Σ CE / N (N: the step's
        global label count); the Trainer reports Σ CE / its `num_items_in_batch` (N with
        average_tokens_across_devices, then multiplied by the number of processes; else this process's count)."""
        trainer = self.trainer
        if num_items_in_batch is not None:
            loss = loss * self._num_items / num_items_in_batch
        if trainer.args.average_tokens_across_devices:
            loss = loss * trainer.accelerator.num_processes
        return loss
