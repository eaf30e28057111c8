"""Cost of one gradient-surgery step (PCGrad, GradVac) against one plain step on the same two-language batch, in
one run.

A plain step is what `MetaXLMTrainer` does without surgery: forward + backward + AdamW on the batch (half of its
rows in each language; +adpt routes each half to its own adapters). A surgery step is what it does with
`gradient_surgery` set (`meta_xlm.surgery.LanguageGradients`): one forward/backward per language into that
language's gradient buffer, the combination (Gram matrix, PCGrad/GradVac coefficients, weighted sum) into `.grad`,
then the same AdamW step. "balanced_sum" keeps the languages apart without surgery (the loss-weights path). Every
mode runs in its own subprocess (its peak memory is its own), modes are interleaved over `--rounds`, and medians of
all timed steps after `--warmup` are reported as ratios to the plain step measured in the same run.

    .venv/bin/python benchmarks/surgery_step.py                        # the issue's size (a few minutes on 2 cores)
    .venv/bin/python benchmarks/surgery_step.py --batch 4 --length 32 --steps 2 --warmup 1 --rounds 1   # smoke run

Peak memory: growth of the subprocess's peak resident set size (getrusage ru_maxrss) over its resident size just
before the first step, MiB. The target is plain + one θ gradient copy per language (printed beside it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from common import add_size_arguments, current_rss_mib, peak_rss_mib, run_worker, size_passthrough

MODES = {  # mode: (gradient_surgery, surgery_granularity); "plain" is the Trainer's ordinary step
    "plain": (None, None),
    "balanced_sum": (None, "model"),
    "pcgrad": ("pcgrad", "model"),
    "gradvac_layer": ("gradvac", "layer"),
    "gradvac_matrix": ("gradvac", "matrix"),
}
LANGUAGES = ["en", "te"]


def make_batch(args, generator):
    """`--batch` rows, the first half in en, the second in te (a language-balanced step of one micro-batch)."""
    import torch

    input_ids = torch.randint(5, args.vocab, (args.batch, args.length), generator=generator)
    masked = torch.rand(args.batch, args.length, generator=generator) < 0.15
    return {
        "input_ids": input_ids.masked_fill(masked, 4),
        "attention_mask": torch.ones_like(input_ids),
        "labels": input_ids.masked_fill(~masked, -100),
        "lang_ids": (torch.arange(args.batch) >= args.batch // 2).long(),
    }


def measure(mode: str, args) -> dict:
    """Runs in the subprocess: warm-up, then timed steps of one mode."""
    import torch

    from meta_xlm.configuration_meta_xlm import MetaXLMConfig
    from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM, parameter_groups
    from meta_xlm.surgery import LanguageGradients, split_by_language

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = MetaXLMConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=args.ffn, max_position_embeddings=args.length + 2,
        languages=LANGUAGES, language_modules=args.language_modules,
    )
    model = MetaXLMForMaskedLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    method, granularity = MODES[mode]
    gradients = LanguageGradients(model, LANGUAGES, method, granularity) if granularity else None
    generator = torch.Generator().manual_seed(0)
    batches = [make_batch(args, generator) for _ in range(4)]

    rss_before = current_rss_mib()
    seconds = []
    for step in range(args.warmup + args.steps):
        batch = batches[step % len(batches)]
        start = time.perf_counter()
        if gradients is None:
            loss = model(**batch).loss
            loss.backward()
        else:
            num_items = batch["labels"].ne(-100).sum()
            losses = []
            for language_index, rows in split_by_language(batch, len(LANGUAGES)):
                losses.append(model(**rows, num_items_in_batch=num_items).loss)
                gradients.accumulate(language_index, losses[-1])
            gradients.finish(None, torch.Generator().manual_seed(step))
            loss = sum(loss.detach() for loss in losses)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{mode}: non-finite loss {loss.item()}")
        if step >= args.warmup:
            seconds.append(time.perf_counter() - start)
    theta_numel = sum(p.numel() for p in parameter_groups(model).shared.values())
    return {"seconds": seconds, "peak_mib": peak_rss_mib() - rss_before, "theta_mib": theta_numel * 4 / 2**20}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser, steps=5)
    parser.add_argument("--language-modules", default="adapters", choices=("none", "adapters"),
                        help="the base: JointPair ('none') or +adpt ('adapters', default)")
    parser.add_argument("--worker", choices=tuple(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.passthrough = [*size_passthrough(args), f"--language-modules={args.language_modules}"]
    return args


def main():
    args = parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args)))
        return
    collected = {mode: {"seconds": [], "peak_mib": [], "theta_mib": 0.0} for mode in MODES}
    for round_index in range(args.rounds):
        for mode in MODES:
            print(f"round {round_index + 1}/{args.rounds}: {mode}", file=sys.stderr, flush=True)
            result = run_worker(__file__, mode, args)
            collected[mode]["seconds"] += result["seconds"]
            collected[mode]["peak_mib"].append(result["peak_mib"])
            collected[mode]["theta_mib"] = result["theta_mib"]

    time_of = {mode: statistics.median(collected[mode]["seconds"]) for mode in MODES}
    peak_of = {mode: max(collected[mode]["peak_mib"]) for mode in MODES}
    allowance = peak_of["plain"] + len(LANGUAGES) * collected["plain"]["theta_mib"]
    print(f"\nbatch {args.batch} x {args.length} (half en, half te), {args.layers} layers, hidden {args.hidden}, "
          f"{args.heads} heads, FFN {args.ffn}, vocab {args.vocab}, language_modules={args.language_modules}, "
          f"{args.threads} threads, fp32, median of {args.steps * args.rounds} steps; "
          f"one θ gradient = {collected['plain']['theta_mib']:.0f} MiB")
    print(f"{'mode':<16} {'s/step':>8} {'x plain':>8} {'peak MiB':>9} {'x plain':>8} {'/ (plain + L θ)':>16}")
    for mode in MODES:
        print(f"{mode:<16} {time_of[mode]:>8.3f} {time_of[mode] / time_of['plain']:>8.2f} {peak_of[mode]:>9.0f} "
              f"{peak_of[mode] / peak_of['plain']:>8.2f} {peak_of[mode] / allowance:>16.2f}")
    print()
    for mode in ("pcgrad", "gradvac_layer"):
        print(f"{mode} time / plain (target <= 1.3): {time_of[mode] / time_of['plain']:.2f}; "
              f"peak / (plain + one θ gradient per language) (target <= 1.0): {peak_of[mode] / allowance:.2f}")


if __name__ == "__main__":
    main()
