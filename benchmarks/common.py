"""Plumbing shared by the benchmarks: the issue's model and batch sizes as flags, forwarding them to worker
subprocesses, and resident-memory readings (model_throughput.py, meta_step.py, surgery_step.py,
meta_objective_scaling.py); the flattening of parameter dicts that the accuracy measurements compare (meta_step.py,
lookahead_precision.py, theta_gradient_difference.py)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

SIZE_FLAGS = ("batch", "length", "layers", "hidden", "heads", "ffn", "vocab", "threads", "steps", "warmup")


def add_size_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """Defaults: batch 16 x 128, 4 layers, hidden 256, 4 heads, FFN 1024, vocab 8000, 2 threads."""
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per subprocess (median over all)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every subprocess")


def size_passthrough(args: argparse.Namespace) -> list[str]:
    """The size flags as a worker subprocess's command line."""
    return [f"--{key}={getattr(args, key)}" for key in SIZE_FLAGS]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start a new peak of the resident set size (Linux: /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_rss_since_reset_mib() -> float:
    """The peak resident set size since the last `reset_peak_rss` (VmHWM; getrusage keeps the lifetime peak)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def flat(tensors: dict, names=None):
    """The tensors named `names` (default: all, in the dict's order) as one float64 vector, for norms and cosines
    that do not round. torch is imported here so that importing this module leaves the parent process light."""
    import torch

    return torch.cat([tensors[name].detach().double().reshape(-1) for name in (tensors if names is None else names)])


def worker_environment(allocator: dict | None = None) -> dict:
    """This process's environment with its glibc MALLOC_* settings replaced by `allocator` (none: glibc's defaults),
    so that a worker's allocator is the one its figure names, whatever the shell had set."""
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    return {**inherited, **(allocator or {})}


def run_worker(script: str, mode: str, args: argparse.Namespace, allocator: dict | None = None,
               extra: list[str] = ()) -> dict:
    """Run `script --worker MODE` with the size flags (then `extra`, which win) in a fresh process (its own peak
    memory; `worker_environment(allocator)`) and return the JSON dict it prints last."""
    command = [sys.executable, script, "--worker", mode, *args.passthrough, *extra]
    result = subprocess.run(command, capture_output=True, text=True, check=False,  # stderr is reported below
                            env=worker_environment(allocator))
    if result.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
