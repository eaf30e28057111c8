"""Tiny model, data and collator shared by tests/test_trainer.py and the DDP script beside this file."""

from __future__ import annotations

import torch
from datasets import Dataset

from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM
from meta_xlm.trainer import MetaXLMTrainer, MetaXLMTrainingArguments

LANGUAGES = ["en", "te", "pt"]
BLOCK = 7


def tiny_model(dtype=torch.float64, seed: int = 0) -> MetaXLMForMaskedLM:
    torch.manual_seed(seed)
    config = MetaXLMConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, languages=LANGUAGES,
        language_modules="adapters",
    )
    return MetaXLMForMaskedLM(config).to(dtype)


def blocks(examples_per_language: dict[str, int], seed: int) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "lang_ids": []}
    for code, count in examples_per_language.items():
        for _ in range(count):
            rows["input_ids"].append(torch.randint(5, 99, (BLOCK,), generator=generator).tolist())
            rows["lang_ids"].append(LANGUAGES.index(code))
    return Dataset.from_dict(rows)


def deterministic_collator(examples):
    """No randomness (so runs with different process layouts mask alike): predict positions where
    (position + token) % 3 == 0, and always position 0."""
    input_ids = torch.tensor([e["input_ids"] for e in examples])  # (B, T)
    positions = torch.arange(input_ids.shape[1])
    predicted = ((positions + input_ids) % 3 == 0) | (positions == 0)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.where(predicted, input_ids, -100),
        "lang_ids": torch.tensor([int(e["lang_ids"]) for e in examples]),
    }


def make_trainer(output_dir, model=None, train=None, validation=None, probs=None, **args) -> MetaXLMTrainer:
    defaults = {
        "output_dir": str(output_dir), "use_cpu": True, "report_to": "none", "save_strategy": "no",
        "logging_steps": 1, "learning_rate": 1e-2, "lr_scheduler_type": "constant", "max_grad_norm": 0.0,
        "seed": 7, "meta_learning": True, "disable_tqdm": True, "dataloader_pin_memory": False,
    }
    defaults.update(args)
    return MetaXLMTrainer(
        model=model if model is not None else tiny_model(),
        args=MetaXLMTrainingArguments(**defaults),
        train_dataset=train if train is not None else blocks({"en": 24, "te": 24, "pt": 24}, seed=1),
        data_collator=deterministic_collator,
        language_sampling_probs=probs,
        meta_validation_datasets=validation if validation is not None else {
            code: blocks({code: 10}, seed=10 + k) for k, code in enumerate(LANGUAGES)
        },
    )


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}
