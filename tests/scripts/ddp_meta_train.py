"""Train the tiny meta-adapter model for 3 steps and save every rank's parameters (used by test_trainer.py and
test_meta_step_engine.py).

Usage: [accelerate launch ...] ddp_meta_train.py OUTPUT_DIR PER_DEVICE_BATCH_SIZE [ARGUMENT=VALUE ...]
ARGUMENT=VALUE: more training arguments (true/false become booleans), or probs=uniform (single-language steps
without meta learning) or dtype=float32.
"""

import sys
from pathlib import Path

import torch

from meta_xlm.cli import leave_process_group

sys.path.insert(0, str(Path(__file__).parent))
from meta_setup import LANGUAGES, make_trainer, tiny_model


def parse(extra: list[str]) -> dict:
    values = dict(entry.split("=", 1) for entry in extra)
    return {key: {"true": True, "false": False}.get(value, value) for key, value in values.items()}


def main(output_dir: str, batch_size: int, extra: list[str]) -> None:
    options = parse(extra)
    probs = {code: 1 / len(LANGUAGES) for code in LANGUAGES} if options.pop("probs", None) == "uniform" else None
    model = tiny_model(getattr(torch, options.pop("dtype", "float64")))
    # an explicit validation batch per device: the default (batch / 3 languages, rounded up) would give 2 processes
    # × 2 examples against 1 process × 3; the per-device size must scale with the layout for the runs to agree
    trainer = make_trainer(output_dir, model=model, probs=probs, max_steps=3, per_device_train_batch_size=batch_size,
                           max_grad_norm=1.0, meta_validation_batch_size=batch_size, **options)
    trainer.train()
    params = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    torch.save(params, Path(output_dir) / f"params_rank{trainer.args.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
    leave_process_group()
