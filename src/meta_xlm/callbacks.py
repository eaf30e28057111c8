"""Run bookkeeping for pretraining: per-language validation perplexity in the logs (paper Fig. 2), checkpoints
marked complete only once every process has written them, and the latest complete checkpoint to resume from."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import DefaultFlowCallback, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


def perplexity(loss: float) -> float:
    """Perplexity of a mean MLM cross-entropy (nats): exp(loss); inf when it overflows."""
    return math.exp(loss) if loss < 700 else math.inf


CHECKPOINT_COMPLETE_MARKER = "checkpoint_complete"


class LanguagePerplexityCallback(TrainerCallback):
    """Adds eval_<lang>_perplexity = exp(eval_<lang>_loss) to each evaluation log (paper Fig. 2).

    It must run before the callbacks that print or write logs: see `add_callback_before_reporters`.
    """

    def __init__(self, languages: Sequence[str]):
        self.languages = list(languages)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        added = {
            f"eval_{language}_perplexity": perplexity(logs[f"eval_{language}_loss"])
            for language in self.languages
            if f"eval_{language}_loss" in logs
        }
        logs.update(added)
        # Trainer.log appended a copy of `logs` to the history before the callbacks ran: keep trainer_state.json
        # (what the report reads) in step with what the reporters see.
        if added and state.log_history:
            state.log_history[-1].update(added)


class CheckpointCompletionCallback(TrainerCallback):
    """Marks a checkpoint folder complete once every process has finished writing it.

    transformers' Trainer writes checkpoint-N/ in place (no temporary folder + rename), so a run killed
    mid-save leaves a folder that looks like a checkpoint. The marker file, written atomically (tmp + rename)
    after a barrier, is what `latest_complete_checkpoint` trusts.
    """

    def on_save(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            temporary = folder / f".{CHECKPOINT_COMPLETE_MARKER}.tmp"
            temporary.write_text(f"global_step={state.global_step}\n")
            os.replace(temporary, folder / CHECKPOINT_COMPLETE_MARKER)


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint-N folder with the largest N that carries the completion marker (None when none does)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    complete = [
        child
        for child in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if child.name.split("-")[-1].isdigit() and (child / CHECKPOINT_COMPLETE_MARKER).is_file()
    ]
    return max(complete, key=lambda child: int(child.name.split("-")[-1]), default=None)


def add_callback_before_reporters(trainer, callback: TrainerCallback) -> None:
    """Insert `callback` so its on_log runs before the progress bar, printer and TensorBoard callbacks,
    which all read the same logs dict (the Trainer calls callbacks in list order)."""
    reporters = [cb for cb in trainer.callback_handler.callbacks if not isinstance(cb, DefaultFlowCallback)]
    for reporter in reporters:
        trainer.remove_callback(reporter)
    trainer.add_callback(callback)
    for reporter in reporters:
        trainer.add_callback(reporter)


__all__ = [
    "CHECKPOINT_COMPLETE_MARKER",
    "CheckpointCompletionCallback",
    "LanguagePerplexityCallback",
    "add_callback_before_reporters",
    "latest_complete_checkpoint",
    "perplexity",
]
