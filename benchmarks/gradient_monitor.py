"""Cost of the gradient-conflict monitor against training, measured in one run.

    .venv/bin/python benchmarks/gradient_monitor.py [--hidden 256 --layers 4 --batch 16 --length 128 --repeats 5]

Prints the monitor's time per measured sentence divided by one training step's time per trained sentence
(target ≤ 1.0: the probe is a forward + backward without dropout, optimizer or model copy, its gradients written
into one flat buffer), and the resulting overhead of
- the paper's setting: every 10 steps, 4096 sentences per language (2 languages + the En-En replicate), with the
  paper's batch of 512 sentences per step;
- the recommended cheaper setting: every 100 steps, 512 sentences per language.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from meta_xlm.analysis.gradient_conflict import measure_gradient_conflict, shared_gradient_index
from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM

LANGUAGES = ["en", "sw"]
PAPER_BATCH = 512
SETTINGS = {
    "paper (every 10 steps, 4096 sentences/language)": (10, 4096),
    "recommended (every 100 steps, 512 sentences/language)": (100, 512),
}


def random_batch(config: MetaXLMConfig, batch: int, length: int, lang_id: int) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(4, config.vocab_size, (batch, length))
    selected = torch.rand(batch, length) < 0.15
    return {
        "input_ids": input_ids.masked_fill(selected, config.vocab_size - 1),
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.where(selected, input_ids, torch.full_like(input_ids, -100)),
        "lang_ids": torch.full((batch,), lang_id),
    }


def repeat_batch(batch):
    while True:
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--micro_batches", type=int, default=2, help="micro-batches accumulated per language")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = MetaXLMConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=args.length + 2,
        languages=LANGUAGES,
    )
    model = MetaXLMForMaskedLM(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batches = {lang: random_batch(config, args.batch, args.length, i) for i, lang in enumerate(LANGUAGES)}
    batches = {lang: {k: v.to(device) for k, v in batch.items()} for lang, batch in batches.items()}
    gradient_index = shared_gradient_index(model)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> float:
        model.train()
        synchronize()
        start = time.perf_counter()
        loss = model(**batches["en"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        return time.perf_counter() - start

    def probe() -> float:
        synchronize()
        start = time.perf_counter()
        measure_gradient_conflict(
            model,
            {lang: repeat_batch(batch) for lang, batch in batches.items()},
            target_sentences=args.micro_batches * args.batch,
            gradient_index=gradient_index,
        )
        synchronize()
        return time.perf_counter() - start

    train_step(), probe()  # warm-up
    # Interleaved so that load from other processes hits both alike.
    train_times, probe_times = [], []
    for _ in range(args.repeats):
        train_times.append(train_step())
        probe_times.append(probe())
    per_trained = statistics.median(train_times) / args.batch
    measured_sentences = (len(LANGUAGES) + 1) * args.micro_batches * args.batch  # + the En-En replicate
    per_measured = statistics.median(probe_times) / measured_sentences
    ratio = per_measured / per_trained
    print(
        f"device {device}; model hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; "
        f"batch {args.batch} x {args.length} tokens; {len(gradient_index.names)} shared tensors, "
        f"{gradient_index.numel:,} values"
    )
    print(f"training step:  {per_trained * 1e3:.2f} ms per trained sentence (median of {args.repeats})")
    print(f"monitor:        {per_measured * 1e3:.2f} ms per measured sentence (median of {args.repeats})")
    print(f"ratio monitor/training per sentence: {ratio:.3f}  (target <= 1.0)")
    for name, (every, sentences) in SETTINGS.items():
        measured = (len(LANGUAGES) + 1) * sentences
        trained = every * PAPER_BATCH
        print(
            f"overhead, {name}: {ratio * measured / trained:.1%} of training time "
            f"({measured} measured per {trained} trained sentences)"
        )


if __name__ == "__main__":
    main()
