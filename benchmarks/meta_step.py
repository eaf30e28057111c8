"""Accuracy and cost of one meta-adapter step: every hypergradient method (forward-over-reverse, central and forward
finite difference, exact double backward, first order), against one plain +adpt step, in one run.

Accuracy (`--accuracy`): the higher-order term of Eq. 4 of every method, in float32 and under bf16 autocast,
against the exact (double backward) term in float32, on a tiny model and at the paper's size (8 layers, hidden
512, FFN 2048, vocab 32k, +adpt, en + te; random init, dropout off, 4 × 64 tokens, β = 1e-4): cosine, norm ratio,
and ‖β · higher-order‖ / ‖direct‖ (how much "meta" a meta step has).

    .venv/bin/python benchmarks/meta_step.py --accuracy                # both sizes (about 10 minutes on 2 cores)
    .venv/bin/python benchmarks/meta_step.py --accuracy --accuracy-sizes tiny   # seconds

A plain step is what `MetaXLMTrainer` does with meta_learning=False: forward + backward + AdamW on one
single-language masked-LM batch. A meta step is what it does with meta_learning=True (Algorithm 1): lookahead
gradient of θ, meta objective over one validation batch per language (the training batch shared out over the
languages, the trainer's default), hypergradient of φ_i, AdamW on φ_i, then the plain step with the new φ_i. Every mode runs in
its own subprocess (its peak memory is its own), modes are interleaved over `--rounds`, and medians of all timed
steps after `--warmup` are reported as ratios to the plain step measured in the same run.

    .venv/bin/python benchmarks/meta_step.py                      # the issue's size (about 5 minutes on 2 cores)
    .venv/bin/python benchmarks/meta_step.py --validation-batch 16  # one full training batch per language
    .venv/bin/python benchmarks/meta_step.py --batch 4 --length 32 --steps 2 --warmup 1 --rounds 1   # smoke run

Peak memory: growth of the subprocess's peak resident set size (getrusage ru_maxrss) over its resident size just
before the first step — model, optimizer state, activations and the meta step's copies (θ', θ ± εg, g) — MiB.
Breakdown: the meta step's phases timed separately (same functions `meta_step_gradients` calls, in order).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from common import add_size_arguments, current_rss_mib, peak_rss_mib, run_worker, size_passthrough

MODES = ("plain", "first_order", "forward_over_reverse", "finite_difference", "forward_difference", "exact")
ACCURACY_SIZES = {  # (layers, hidden, heads, FFN, vocab)
    "tiny": (2, 32, 4, 37, 99),
    "paper": (8, 512, 8, 2048, 32000),
}
ACCURACY_METHODS = (  # (method, fd_epsilon)
    ("forward_over_reverse", None), ("exact", None), ("finite_difference", 0.01), ("finite_difference", 0.1),
    ("forward_difference", 0.01),
)
LANGUAGES = ["en", "te"]
PHASES = ("lookahead_gradient", "meta_objective", "higher_order", "phi_update", "theta_step")


def make_batch(language: int, args, generator, size: int | None = None):
    import torch

    size = size or args.batch
    input_ids = torch.randint(5, args.vocab, (size, args.length), generator=generator)
    masked = torch.rand(size, args.length, generator=generator) < 0.15
    return {
        "input_ids": input_ids.masked_fill(masked, 4),
        "attention_mask": torch.ones_like(input_ids),
        "labels": input_ids.masked_fill(~masked, -100),
        "lang_ids": torch.full((size,), language, dtype=torch.long),
    }


def validation_batch(args) -> int:
    """Validation examples per language: --validation-batch, or the trainer's default (the training batch shared
    out over the languages, rounded up)."""
    return args.validation_batch or -(-args.batch // len(LANGUAGES))


def measure(mode: str, args) -> dict:
    """Runs in the subprocess: warm-up, then timed steps of one mode."""
    import torch

    from meta_xlm.configuration_meta_xlm import MetaXLMConfig
    from meta_xlm.meta import (
        count_labels, lookahead, meta_objective_gradients, mixed_hessian_vector_product, train_gradient,
    )
    from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM, parameter_groups

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = MetaXLMConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=args.ffn, max_position_embeddings=args.length + 2,
        languages=LANGUAGES, language_modules="adapters",
    )
    model = MetaXLMForMaskedLM(config).train()
    groups = parameter_groups(model)
    language_ids = {id(p) for params in groups.languages.values() for p in params.values()}
    if mode == "plain":  # +adpt: one optimizer over everything
        theta_optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    else:
        theta_optimizer = torch.optim.AdamW([p for p in model.parameters() if id(p) not in language_ids], lr=1e-4)
        phi_optimizer = torch.optim.AdamW([p for p in model.parameters() if id(p) in language_ids], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    train_batches = [make_batch(step % 2, args, generator) for step in range(4)]
    val_batches = {
        code: make_batch(k, args, generator, validation_batch(args)) for k, code in enumerate(LANGUAGES)
    }
    val_num_items = {code: count_labels([b]) for code, b in val_batches.items()}

    rss_before = current_rss_mib()
    totals, phases = [], {phase: [] for phase in PHASES}
    for step in range(args.warmup + args.steps):
        batch = train_batches[step % len(train_batches)]
        language = LANGUAGES[int(batch["lang_ids"][0])]
        marks = [time.perf_counter()]
        if mode != "plain":
            shared, phi = groups.shared, groups.languages[language]
            num_items = count_labels([batch])
            # Eq. 3: lookahead gradient of θ (the trainer uses the same functions through meta_step_gradients);
            # forward_difference also takes φ_i's gradient there, the base point of its one-sided difference.
            wrt = {**shared, **phi} if mode == "forward_difference" else shared
            # exact: the lookahead's gradient keeps its graph for the higher-order term
            train = train_gradient(model, [batch], wrt, num_items, [step], keep_graph=mode == "exact")
            at_theta = {name: train.gradient.pop(name) for name in phi} if mode == "forward_difference" else None
            theta_prime = lookahead(shared, train.gradient, 1e-4)
            marks.append(time.perf_counter())
            outer, direct, _ = meta_objective_gradients(model, val_batches, theta_prime, language, phi, val_num_items)
            del theta_prime
            marks.append(time.perf_counter())
            higher = mixed_hessian_vector_product(
                model, [batch], shared, phi, outer, num_items, [step], mode, fd_epsilon=0.01,
                gradient_at_theta=at_theta, attached=train.attached,
            )
            del train
            marks.append(time.perf_counter())
            for name, param in phi.items():  # Eq. 4, then φ_i's own AdamW
                param.grad = direct[name] - 1e-4 * higher[name]
            phi_optimizer.step()
            phi_optimizer.zero_grad(set_to_none=True)
            del outer, direct, higher
            marks.append(time.perf_counter())
        loss = model(**batch).loss  # Eq. 5 (plain: the whole +adpt step)
        loss.backward()
        theta_optimizer.step()
        theta_optimizer.zero_grad(set_to_none=True)
        for param in model.parameters():
            param.grad = None
        marks.append(time.perf_counter())
        if not torch.isfinite(loss):
            raise RuntimeError(f"{mode}: non-finite loss {loss.item()}")
        if step >= args.warmup:
            totals.append(marks[-1] - marks[0])
            if mode != "plain":
                for phase, start, end in zip(PHASES, marks, marks[1:]):
                    phases[phase].append(end - start)
    return {"seconds": totals, "phases": phases, "peak_mib": peak_rss_mib() - rss_before}


def accuracy_rows(size: str, threads: int, methods: list[str]):
    """Yields (method, precision, cosine, norm ratio, higher-order ratio) of every method at one size, against the
    exact float32 higher-order term."""
    import torch

    from meta_xlm.configuration_meta_xlm import MetaXLMConfig
    from meta_xlm.meta import (
        count_labels, lookahead, meta_objective_gradients, mixed_hessian_vector_product, train_gradient,
        trainable_parameter_groups,
    )
    from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers, hidden, heads, ffn, vocab = ACCURACY_SIZES[size]
    config = MetaXLMConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=66, languages=LANGUAGES, language_modules="adapters",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = MetaXLMForMaskedLM(config).train()
    sizes = argparse.Namespace(batch=4, length=64, vocab=vocab)
    generator = torch.Generator().manual_seed(0)
    train = [make_batch(1, sizes, generator)]
    val = {code: make_batch(k, sizes, generator) for k, code in enumerate(LANGUAGES)}
    groups = trainable_parameter_groups(model)
    shared, phi = groups.shared, groups.languages["te"]
    num_items, beta = count_labels(train), 1e-4
    gradient = train_gradient(model, train, shared, num_items, [0]).gradient
    outer, direct, _ = meta_objective_gradients(
        model, val, lookahead(shared, gradient, beta), "te", phi, {c: count_labels([b]) for c, b in val.items()}
    )

    def flat(tensors):
        return torch.cat([tensors[name].double().reshape(-1) for name in phi])

    reference = flat(mixed_hessian_vector_product(model, train, shared, phi, outer, num_items, [0], "exact"))
    for method, epsilon in (entry for entry in ACCURACY_METHODS if entry[0] in methods):
        for precision in ("fp32", "bf16"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                # as meta_step_gradients runs them, at this precision: forward_difference's base point ∇_{φ_i} L(θ)
                # and exact's graph both come from the lookahead's pass
                at_theta = train_gradient(model, train, phi, num_items, [0]).gradient if method == "forward_difference" else None
                kept = train_gradient(model, train, shared, num_items, [0], keep_graph=True) if method == "exact" else None
                term = flat(mixed_hessian_vector_product(
                    model, train, shared, phi, outer, num_items, [0], method, fd_epsilon=epsilon or 0.01,
                    gradient_at_theta=at_theta, attached=kept.attached if kept else None,
                ))
            cosine = float(torch.nn.functional.cosine_similarity(term, reference, dim=0))
            label = method if epsilon is None else f"{method}, fd_epsilon {epsilon}"
            yield (label, precision, cosine, float(term.norm() / reference.norm()),
                   float(beta * term.norm() / flat(direct).norm()))


def print_accuracy(args) -> None:
    print("higher-order term of Eq. 4 vs the exact (double backward) term in float32; random init, dropout off, "
          "batch 4 x 64, beta 1e-4, en + te")
    print(f"{'size':<6} {'method':<36} {'precision':<9} {'cosine':>8} {'norm ratio':>10} {'β·HO/direct':>12}")
    for size in args.accuracy_sizes.split(","):
        for label, precision, cosine, norm_ratio, ho_ratio in accuracy_rows(size, args.threads, args.modes):
            print(f"{size:<6} {label:<36} {precision:<9} {cosine:>8.4f} {norm_ratio:>10.4f} {ho_ratio:>12.2e}",
                  flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser, steps=5)
    parser.add_argument("--validation-batch", type=int, default=None,
                        help="validation examples per language (default: --batch / languages, rounded up, the "
                             "trainer's default; MetaXLMTrainingArguments.meta_validation_batch_size sets it)")
    parser.add_argument("--accuracy", action="store_true", help="print the accuracy table instead of timing")
    parser.add_argument("--accuracy-sizes", default="tiny,paper", help=f"comma-separated, of {list(ACCURACY_SIZES)}")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated subset of {list(MODES)} (timing: plain is always measured; "
                             "--accuracy: the methods in the table)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.modes = ["plain"] + [m for m in args.modes.split(",") if m != "plain"]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: {unknown} not in {list(MODES)}")
    args.passthrough = size_passthrough(args)
    if args.validation_batch is not None:
        args.passthrough.append(f"--validation-batch={args.validation_batch}")
    return args


def main():
    args = parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args)))
        return
    if args.accuracy:
        print_accuracy(args)
        return
    collected = {mode: {"seconds": [], "peak_mib": [], "phases": {p: [] for p in PHASES}} for mode in args.modes}
    for round_index in range(args.rounds):
        for mode in args.modes:
            print(f"round {round_index + 1}/{args.rounds}: {mode}", file=sys.stderr, flush=True)
            result = run_worker(__file__, mode, args)
            collected[mode]["seconds"] += result["seconds"]
            collected[mode]["peak_mib"].append(result["peak_mib"])
            for phase in PHASES:
                collected[mode]["phases"][phase] += result["phases"][phase]

    time_of = {mode: statistics.median(collected[mode]["seconds"]) for mode in args.modes}
    peak_of = {mode: max(collected[mode]["peak_mib"]) for mode in args.modes}
    print(f"\nbatch {args.batch} x {args.length}, {args.layers} layers, hidden {args.hidden}, {args.heads} heads, "
          f"FFN {args.ffn}, vocab {args.vocab}, {len(LANGUAGES)} languages (validation batch per language "
          f"{validation_batch(args)}), {args.threads} threads, fp32, "
          f"median of {args.steps * args.rounds} steps")
    print(f"{'mode':<18} {'s/step':>8} {'x plain':>8} {'peak MiB':>9} {'x plain':>8}")
    for mode in args.modes:
        print(f"{mode:<18} {time_of[mode]:>8.3f} {time_of[mode] / time_of['plain']:>8.2f} "
              f"{peak_of[mode]:>9.0f} {peak_of[mode] / peak_of['plain']:>8.2f}")
    print("\nbreakdown of a meta step (median seconds, in units of one plain step):")
    print(f"{'mode':<18} " + " ".join(f"{phase:>19}" for phase in PHASES))
    for mode in args.modes[1:]:
        cells = [statistics.median(collected[mode]["phases"][phase]) for phase in PHASES]
        print(f"{mode:<18} " + " ".join(f"{c:>8.3f} ({c / time_of['plain']:>5.2f}x)  " for c in cells))
    print()
    from meta_xlm.trainer import MetaXLMTrainingArguments

    default = MetaXLMTrainingArguments.__dataclass_fields__["hypergradient"].default
    if default in args.modes:
        print(f"{default} (default) time / plain (target <= 4.5): {time_of[default] / time_of['plain']:.2f}")
        print(f"{default} (default) peak / plain (target <= 2.0): {peak_of[default] / peak_of['plain']:.2f}")
    # The plain step runs in its own subprocesses and varies between them (0.48-0.62 s seen at the size);
    # every meta step also contains a plain step (its θ step), timed in the same process: a second baseline.
    for mode in args.modes[1:]:
        theta_step = statistics.median(collected[mode]["phases"]["theta_step"])
        print(f"{mode} time / its own theta step (same process): {time_of[mode] / theta_step:.2f}")


if __name__ == "__main__":
    main()
