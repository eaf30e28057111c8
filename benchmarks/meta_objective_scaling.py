"""Meta step time and peak memory versus the number of languages L (issue 27): the sampled meta objective
(`meta_languages_per_step: k`) against every language.

    .venv/bin/python benchmarks/meta_objective_scaling.py --languages 2 8 32 100 --k 2 --threads 1 --steps 3

Synthetic languages on the benchmark model (benchmarks/common.py sizes): L copies of the adapters, one training
batch of language 0, the trainer's default validation batch (the step's examples / languages read, at least 1).
Each (L, k) runs in its own process (its own peak resident memory); the median of `--steps` timed meta steps
(`meta_step_gradients`, double backward) after `--warmup`. Target: k = 2, time at L = 100 ≤ 1.15× time at L = 2.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_size_arguments, peak_rss_mib, run_worker, size_passthrough  # noqa: E402


def batch(args, language: int, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(5, args.vocab, (size, args.length), generator=generator)
    labels = torch.where(torch.rand(size, args.length, generator=generator) < 0.15, input_ids, -100)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
            "lang_ids": torch.full((size,), language)}


def worker(args) -> dict:
    from meta_xlm.configuration_meta_xlm import MetaXLMConfig
    from meta_xlm.meta import meta_step_gradients
    from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM
    from meta_xlm.steps import every_language, sampled_languages

    torch.set_num_threads(args.threads)
    num_languages, k = args.num_languages, args.k
    languages = [f"l{index}" for index in range(num_languages)]
    config = MetaXLMConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                           num_attention_heads=args.heads, intermediate_size=args.ffn, languages=languages,
                           language_modules="adapters", max_position_embeddings=args.length + 2)
    model = MetaXLMForMaskedLM(config).train()
    generator = torch.Generator().manual_seed(0)
    read = num_languages if k is None else min(k, num_languages)
    val_size = max(1, math.ceil(args.batch / read))  # the trainer's default: the step's examples shared over k
    objective = every_language if k is None else sampled_languages(k, seed=0)
    times = []
    for step in range(args.warmup + args.steps):
        weights = objective(languages, "l0", step)
        train = batch(args, 0, args.batch, generator)
        vals = {code: batch(args, languages.index(code), val_size, generator) for code in weights}
        start = time.perf_counter()
        meta_step_gradients(model, [train], vals, "l0", lookahead_lr=1e-4, method="double_backward",
                            meta_weights=weights)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times[args.warmup:]), "peak_mib": peak_rss_mib(), "read": read}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser, steps=3)
    parser.add_argument("--languages", type=int, nargs="+", default=[2, 8, 32, 100])
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--num_languages", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        args.k = None if args.worker == "all" else args.k
        print(json.dumps(worker(args)))
        return
    results = {}
    for num_languages in args.languages:
        for mode in (f"k{args.k}", "all"):
            args.passthrough = [*size_passthrough(args), f"--num_languages={num_languages}", f"--k={args.k}"]
            results[num_languages, mode] = run_worker(__file__, mode, args)
    print(f"{'L':>4} {'objective':>10} {'languages read':>15} {'time (s)':>9} {'vs L=' + str(args.languages[0]):>8} "
          f"{'peak MiB':>9}")
    for (num_languages, mode), result in results.items():
        base = results[args.languages[0], mode]["seconds"]
        print(f"{num_languages:>4} {mode:>10} {result['read']:>15} {result['seconds']:>9.3f} "
              f"{result['seconds'] / base:>7.2f}x {result['peak_mib']:>9.0f}")


if __name__ == "__main__":
    main()
