"""Data pipeline throughput against the training step's consumption, and memory as the corpus grows 10x.

    python benchmarks/data_pipeline.py [--text_dir ../shared/data/text] [--language en] [--scales 1 10]

Pipeline = read (gzip) + tokenize (shared byte-level BPE) + pack into blocks + MLM-mask batches, measured on a
fresh Arrow cache. Consumption = training tokens/s of MetaXLMForMaskedLM (forward + backward + AdamW step) on
the tiny test model and on the paper-size model (8 layers, hidden 512, FFN 2048, vocab 32k), same process.
Target: pipeline >= 10x consumption. Memory: peak anonymous RSS (file-backed Arrow pages excluded: they are
page cache, not process memory) of a child process running the pipeline on the corpus repeated 1x and 10x.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.data import (
    MLMCollator,
    load_language_corpus,
    split_validation,
    tokenize_into_blocks,
    train_shared_tokenizer,
)
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM

DEFAULT_TEXT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
BLOCK_SIZE = 256
BATCH_SIZE = 8
MODELS = {
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37},
    "paper": {
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
    },
}


class AnonymousMemoryPeak:
    """Peak RssAnon of this process, sampled every 20 ms (anonymous memory: heap, not mmap'd files)."""

    def __init__(self):
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def write_scaled_corpus(sources: list[Path], scale: int, folder: Path) -> Path:
    """The source lines repeated `scale` times, as one gzip file (what a 10x larger corpus costs to read)."""
    lines = []
    for source in sources:
        with gzip.open(source, "rt", encoding="utf-8") as handle:
            lines.extend(handle)
    target = folder / f"corpus_x{scale}.txt.gz"
    with gzip.open(target, "wt", encoding="utf-8", compresslevel=1) as handle:
        for _ in range(scale):
            handle.writelines(lines)
    return target


def run_pipeline(corpus: Path, tokenizer_dir: Path, cache_dir: Path) -> dict:
    """Read + tokenize + block (once, into the Arrow cache) + mask every block of `corpus`.

    tokens_per_s covers the whole pipeline; batch_tokens_per_s only what runs during training once the cache
    exists (Arrow read of the blocks + MLM collation), the per-step cost a training step waits on.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    collator = MLMCollator(tokenizer)
    started = time.perf_counter()
    sentences = load_language_corpus("xx", [corpus], cache_dir=str(cache_dir))
    blocks = tokenize_into_blocks(sentences, tokenizer, BLOCK_SIZE, lang_id=0)
    batching_started = time.perf_counter()
    for start in range(0, len(blocks), BATCH_SIZE):
        batch = blocks[start : start + BATCH_SIZE]
        collator(
            [{"input_ids": ids, "lang_ids": lang} for ids, lang in zip(batch["input_ids"], batch["lang_ids"])]
        )
    finished = time.perf_counter()
    tokens = len(blocks) * BLOCK_SIZE
    return {
        "sentences": len(sentences),
        "tokens": tokens,
        "seconds": finished - started,
        "tokens_per_s": tokens / (finished - started),
        "batch_tokens_per_s": tokens / (finished - batching_started),
    }


def training_tokens_per_second(model_kwargs: dict, vocab_size: int, steps: int, device: str) -> float:
    config = MetaXLMConfig(vocab_size=vocab_size, languages=["en"], default_language="en", **model_kwargs)
    model = MetaXLMForMaskedLM(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    input_ids = torch.randint(5, vocab_size, (BATCH_SIZE, BLOCK_SIZE), device=device)  # (B, T)
    labels = torch.where(torch.rand(input_ids.shape, device=device) < 0.15, input_ids, -100)  # (B, T)

    def step():
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * BATCH_SIZE * BLOCK_SIZE / (time.perf_counter() - started)


def child_main(args) -> None:
    """Run the pipeline once in this process and print its figures and peak memory as JSON."""
    with AnonymousMemoryPeak() as memory:
        figures = run_pipeline(Path(args.corpus), Path(args.tokenizer_dir), Path(args.cache_dir))
    figures["peak_rss_anon_mib"] = memory.peak_kib / 1024
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--text_dir", default=str(DEFAULT_TEXT_DIR))
    parser.add_argument("--language", default="en")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--training_steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer_dir", help=argparse.SUPPRESS)
    parser.add_argument("--cache_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    with tempfile.TemporaryDirectory(prefix="data_pipeline_bench_") as work:
        benchmark(args, Path(work))


def benchmark(args, work: Path) -> None:
    """Tokenizer, then the pipeline per corpus scale (child processes), then training rates; prints tables."""
    sources = sorted((Path(args.text_dir) / args.language).glob("*.txt.gz"))
    sentences = load_language_corpus(args.language, sources, cache_dir=str(work / "tokenizer_cache"))
    train, _ = split_validation(sentences, 100, seed=0, language=args.language)
    tokenizer = train_shared_tokenizer(
        {args.language: train},
        vocab_size=32000,
        temperature=1.0,
        num_sentences=min(len(train), 50000),
        seed=0,
        show_progress=False,
    )
    tokenizer.save_pretrained(work / "tokenizer")

    pipeline = {}
    for scale in args.scales:
        corpus = write_scaled_corpus(sources, scale, work)
        result = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--corpus",
                str(corpus),
                "--tokenizer_dir",
                str(work / "tokenizer"),
                "--cache_dir",
                str(work / f"cache_x{scale}"),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        pipeline[scale] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"pipeline x{scale}: {pipeline[scale]}", flush=True)

    pipeline_rate = pipeline[args.scales[0]]["tokens_per_s"]
    batch_rate = pipeline[args.scales[0]]["batch_tokens_per_s"]
    print(
        f"\n{args.language} corpus: {len(sentences)} lines; block {BLOCK_SIZE}, batch {BATCH_SIZE}, "
        f"torch threads {torch.get_num_threads()}, training on {args.device}"
    )
    print(
        "| model | training tokens/s | full pipeline tokens/s (ratio) | training-time batching tokens/s (ratio) |"
    )
    print("|---|---|---|---|")
    for name, model_kwargs in MODELS.items():
        rate = training_tokens_per_second(model_kwargs, len(tokenizer), args.training_steps, args.device)
        print(
            f"| {name} | {rate:,.0f} | {pipeline_rate:,.0f} ({pipeline_rate / rate:.1f}x) | "
            f"{batch_rate:,.0f} ({batch_rate / rate:.1f}x) |",
            flush=True,
        )
    print("\n| corpus | sentences | block tokens | pipeline tokens/s | peak anonymous RSS (MiB) |")
    print("|---|---|---|---|---|")
    for scale, figures in pipeline.items():
        print(
            f"| x{scale} | {figures['sentences']:,} | {figures['tokens']:,} | {figures['tokens_per_s']:,.0f} | "
            f"{figures['peak_rss_anon_mib']:.0f} |"
        )
    first, last = pipeline[args.scales[0]], pipeline[args.scales[-1]]
    print(
        f"\nmemory ratio x{args.scales[-1]} / x{args.scales[0]}: "
        f"{last['peak_rss_anon_mib'] / first['peak_rss_anon_mib']:.2f} "
        f"(corpus grew {last['sentences'] / first['sentences']:.0f}x)"
    )


if __name__ == "__main__":
    main()
