"""One meta step's hypergradient and meta loss over fixed global batches, saved per rank (test_trainer_meta.py).

Process r of P takes rows [r·8/P, (r+1)·8/P) of 8 fixed training examples and of 8 validation examples per language,
so every process layout sees the same global batch. Usage:
    [accelerate launch ...] ddp_meta_hypergradient.py OUTPUT_DIR AVERAGE_TOKENS_ACROSS_DEVICES(true|false)
"""

import sys
from pathlib import Path

import torch

from meta_xlm.cli import leave_process_group

sys.path.insert(0, str(Path(__file__).parent))
from meta_setup import LANGUAGES, blocks, deterministic_collator, make_trainer

GLOBAL_BATCH = 8


def rows(dataset, rank: int, world_size: int) -> dict[str, torch.Tensor]:
    size = GLOBAL_BATCH // world_size
    return deterministic_collator([dataset[i] for i in range(rank * size, (rank + 1) * size)])


def main(output_dir: str, average_tokens: bool) -> None:
    trainer = make_trainer(output_dir, per_device_train_batch_size=4, max_steps=1, learning_rate=0.5,
                           average_tokens_across_devices=average_tokens)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    rank, world_size = trainer.args.process_index, trainer.args.world_size
    train = blocks({"te": GLOBAL_BATCH}, seed=5)
    validation = {code: blocks({code: GLOBAL_BATCH}, seed=20 + k) for k, code in enumerate(LANGUAGES)}
    step = trainer.compute_meta_step(
        trainer.model, [rows(train, rank, world_size)],
        {code: rows(dataset, rank, world_size) for code, dataset in validation.items()}, "te",
    )
    torch.save({"hypergradient": step.hypergradient, "meta_loss": step.meta_loss},
               Path(output_dir) / f"meta_step_rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "true")
    leave_process_group()
