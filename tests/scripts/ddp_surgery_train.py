"""Train the tiny adapter model for 3 GradVac steps (per-layer surgery, clipping) and save every rank's parameters
and GradVac targets (used by test_trainer_surgery.py).

Usage: [accelerate launch ...] ddp_surgery_train.py OUTPUT_DIR PER_DEVICE_BATCH_SIZE
"""

import sys
from pathlib import Path

import torch

from meta_xlm.cli import leave_process_group

sys.path.insert(0, str(Path(__file__).parent))
from meta_setup import make_trainer


def main(output_dir: str, batch_size: int) -> None:
    trainer = make_trainer(output_dir, meta_learning=False, gradient_surgery="gradvac", surgery_granularity="layer",
                           gradvac_ema=0.5, max_steps=3, per_device_train_batch_size=batch_size, max_grad_norm=1.0)
    trainer.train()
    state = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    state["gradvac_targets"] = trainer.language_gradients.gradvac.targets
    torch.save(state, Path(output_dir) / f"params_rank{trainer.args.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
    leave_process_group()
