"""Training-step throughput of MetaXLMForMaskedLM against transformers' X-MOD and XLM-R, and compiled against
eager, in one run.

A step is forward + backward + AdamW on a one-language masked-LM batch (15% of positions predicted). MetaXLM runs
as the pretraining recipe runs it: sparse prediction (only masked positions projected onto the vocabulary) and
the collator's `single_language`. "compiled" wraps the model in `torch.compile` (dense logits, as the recipe
uses under `torch_compile=True`) and is compared with the same dense model run eagerly; compilation happens in
the warm-up steps, so compile time is excluded from tokens/s. Each model and precision runs in its own
subprocess (so peak memory is its own); the subprocesses are interleaved over `--rounds` rounds and the median
tokens/s over all timed steps is reported, with ratios against the baselines measured here.

    .venv/bin/python benchmarks/model_throughput.py            # default sizes of the issue
    .venv/bin/python benchmarks/model_throughput.py --steps 3 --warmup 1 --rounds 1 --batch 4   # smoke run

Peak memory is the growth of the process's peak resident set size over its size just before the first step
(model, optimizer state and activations of a step), in MiB.

Allocator. On CPU, glibc's malloc serves large tensors from fresh `mmap`s and hands freed heap back to the kernel,
so a step spends much of its time in page faults on first touch (measured: elementwise ops 3-10x slower than
their arithmetic, `aten::fill_` of X-MOD's dense logits 12 % of its step). How much depends on each model's
allocation pattern, not on its arithmetic. Every figure is therefore printed twice, for every model alike:
under glibc's defaults, and with `MALLOC_MMAP_THRESHOLD_=32 MiB` and `MALLOC_TRIM_THRESHOLD_=2 GiB` (freed memory
is reused rather than returned; what jemalloc/tcmalloc or PyTorch's own CPU setup guides achieve). The pretraining
recipe sets the same two values at start-up on CPU (`meta_xlm.cpu_allocator`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import add_size_arguments, current_rss_mib, peak_rss_mib, size_passthrough, worker_environment

from meta_xlm.cpu_allocator import REUSE_FREED_MEMORY

CANDIDATES = {
    # name: (model family, language_modules, sparse prediction, torch.compile)
    "meta_xlm_adapters": ("meta_xlm", "adapters", True, False),
    "xmod": ("xmod", None, False, False),
    "meta_xlm_none": ("meta_xlm", "none", True, False),
    "xlm_roberta": ("xlm_roberta", None, False, False),
    "adapters_dense": ("meta_xlm", "adapters", False, False),
    "adapters_compiled": ("meta_xlm", "adapters", False, True),
}
LANGUAGES = ["en", "sw"]


def build_model(family: str, language_modules: str | None, sparse: bool, args):
    sizes = dict(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.ffn,
        max_position_embeddings=args.length + 2,
        type_vocab_size=1,
    )
    if family == "meta_xlm":
        from meta_xlm import MetaXLMConfig, MetaXLMForMaskedLM

        config = MetaXLMConfig(
            languages=LANGUAGES, language_modules=language_modules, sparse_prediction=sparse, **sizes
        )
        return MetaXLMForMaskedLM(config)
    if family == "xmod":
        from transformers import XmodConfig, XmodForMaskedLM

        # X-MOD's adapters sit after the FFN block only; reduction 2 on one adapter per layer equals our two
        # adapters per layer at reduction 4 in parameters and FLOPs.
        config = XmodConfig(languages=LANGUAGES, default_language=LANGUAGES[0], adapter_reduction_factor=2, **sizes)
        return XmodForMaskedLM(config)
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    return XLMRobertaForMaskedLM(XLMRobertaConfig(**sizes))


def make_batch(family: str, args, generator):
    import torch

    input_ids = torch.randint(5, args.vocab, (args.batch, args.length), generator=generator)
    masked = torch.rand(args.batch, args.length, generator=generator) < 0.15
    labels = input_ids.masked_fill(~masked, -100)
    batch = {"input_ids": input_ids.masked_fill(masked, 4), "attention_mask": torch.ones_like(input_ids)}
    batch["labels"] = labels
    if family == "meta_xlm":
        batch["lang_ids"] = torch.zeros(args.batch, dtype=torch.long)
        batch["single_language"] = LANGUAGES[0]  # what MLMCollator(languages=...) adds to a one-language batch
    elif family == "xmod":
        batch["lang_ids"] = torch.zeros(args.batch, dtype=torch.long)
    return batch


def measure(name: str, precision: str, args) -> dict:
    """Runs in the subprocess: warm-up then timed steps of one model at one precision."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    family, language_modules, sparse, compiled = CANDIDATES[name]
    model = build_model(family, language_modules, sparse, args).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compiled else model
    generator = torch.Generator().manual_seed(0)
    batches = [make_batch(family, args, generator) for _ in range(4)]
    rss_before = current_rss_mib()
    times = []
    for step in range(args.warmup + args.steps):
        batch = batches[step % len(batches)]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        if not torch.isfinite(loss):
            raise RuntimeError(f"{name} {precision}: non-finite loss {loss.item()}")
        if step >= args.warmup:
            times.append(elapsed)
    tokens = args.batch * args.length
    return {"tokens_per_s": [tokens / t for t in times], "peak_mib": peak_rss_mib() - rss_before}


ALLOCATORS = {"glibc default": {}, "reuse freed memory": REUSE_FREED_MEMORY}


def run_subprocess(name: str, precision: str, allocator: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--precision", precision, *args.passthrough]
    result = subprocess.run(command, capture_output=True, text=True, env=worker_environment(ALLOCATORS[allocator]))
    if result.returncode != 0:
        error = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        return {"error": error}
    return json.loads(result.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser, steps=6)
    parser.add_argument("--worker", choices=list(CANDIDATES), help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    parser.add_argument("--fp32-only", action="store_true", help="skip the bf16 runs")
    parser.add_argument("--models", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES),
                        help="only these models (ratios needing a model left out print nan)")
    args = parser.parse_args(argv)
    args.passthrough = size_passthrough(args)
    return args


def collect(args) -> dict:
    """Every (allocator, model, precision) run, interleaved over the rounds."""
    precisions = ("fp32",) if args.fp32_only else ("fp32", "bf16")
    runs = [(allocator, name, precision) for allocator in ALLOCATORS for precision in precisions for name in args.models]
    collected = {run: {"tokens_per_s": [], "peak_mib": [], "error": None} for run in runs}
    for round_index in range(args.rounds):
        for run in runs:
            print(f"round {round_index + 1}/{args.rounds}: {' '.join(run)}", file=sys.stderr, flush=True)
            result = run_subprocess(run[1], run[2], run[0], args)
            if "error" in result:
                collected[run]["error"] = result["error"]
                continue
            collected[run]["tokens_per_s"] += result["tokens_per_s"]
            collected[run]["peak_mib"].append(result["peak_mib"])
    return collected


def report(collected: dict, allocator: str) -> None:
    def median_tps(name, precision):
        values = collected.get((allocator, name, precision), {"tokens_per_s": []})["tokens_per_s"]  # bf16 absent
        return statistics.median(values) if values else float("nan")

    print(f"\nallocator: {allocator} {ALLOCATORS[allocator] or ''}")
    print(f"{'model':<20} {'precision':<9} {'tokens/s':>10} {'peak MiB':>9}  note")
    for (run_allocator, name, precision), entry in collected.items():
        if run_allocator != allocator:
            continue
        peak = max(entry["peak_mib"]) if entry["peak_mib"] else float("nan")
        note = f"FAILED: {entry['error']}" if entry["error"] else ""
        print(f"{name:<20} {precision:<9} {median_tps(name, precision):>10.0f} {peak:>9.0f}  {note}")
    ratios = {
        "adapters fp32 / X-MOD fp32 (target >= 1.8)": median_tps("meta_xlm_adapters", "fp32") / median_tps("xmod", "fp32"),
        "adapters compiled / eager, dense, fp32": median_tps("adapters_compiled", "fp32")
        / median_tps("adapters_dense", "fp32"),
        "adapters sparse / dense, eager, fp32": median_tps("meta_xlm_adapters", "fp32")
        / median_tps("adapters_dense", "fp32"),
        "adapters bf16 / adapters fp32 (target >= 1.5)": median_tps("meta_xlm_adapters", "bf16")
        / median_tps("meta_xlm_adapters", "fp32"),
        "none fp32 / XLM-R fp32 (target >= 0.95)": median_tps("meta_xlm_none", "fp32") / median_tps("xlm_roberta", "fp32"),
        "none bf16 / XLM-R bf16": median_tps("meta_xlm_none", "bf16") / median_tps("xlm_roberta", "bf16"),
    }
    for label, value in ratios.items():
        print(f"  {label:<48} {value:6.2f}")


def main():
    args = parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.precision, args)))
        return
    collected = collect(args)
    print(f"\nbatch {args.batch} x {args.length}, {args.layers} layers, hidden {args.hidden}, {args.heads} heads, "
          f"FFN {args.ffn}, vocab {args.vocab}, {args.threads} threads, median of {args.steps * args.rounds} steps")
    for allocator in ALLOCATORS:
        report(collected, allocator)


if __name__ == "__main__":
    main()
