"""Pretrain a MetaXLM masked LM (Mono / JointPair / JointTri / +ffn / +attn / +adpt / +share adpt / +meta adpt).

    accelerate launch recipes/pretrain.py --config recipes/configs/<model>.yaml [--field value ...]

Every field of the dataclasses below (and of MetaXLMTrainingArguments) can be set in the YAML file or on the
command line; the command line wins. An unknown key is an error. `--resume_from_checkpoint latest` resumes from
the newest complete checkpoint in output_dir. The output folder gets the model card (README.md, written by
meta_xlm.model_card); `--push_to_hub --hub_model_id USER/NAME [--hub_revision BRANCH] [--hub_private_repo true]`
then uploads the folder once, after saving (meta_xlm.hub.push_to_hub).

Adding a language to a pretrained model (X-MOD's post-hoc extension): `--extend_model DIR --languages en te kn`
loads the masked LM in DIR (languages en, te) and its tokenizer, adds kn's language modules, and trains only
them on kn text (`--extend_train_embeddings true` also trains the embeddings, which changes en and te too).
The old languages keep their data for validation but get no training steps, and their outputs stay
bit-identical. The architecture fields below are then taken from DIR.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from transformers import AutoTokenizer, set_seed

import meta_xlm  # noqa: F401  (registers the Auto classes)
from meta_xlm.callbacks import (
    CheckpointCompletionCallback,
    LanguagePerplexityCallback,
    add_callback_before_reporters,
    latest_complete_checkpoint,
    perplexity,
)
from meta_xlm.cli import arguments_to_dict, grouped_key_values, leave_process_group, parse_config_and_args
from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.cpu_allocator import reuse_freed_memory_when_on
from meta_xlm.data import (
    MLMCollator,
    build_blocks,
    characters_per_token,
    check_special_token_ids,
    load_corpora,
    pretraining_splits,
    train_shared_tokenizer,
)
from meta_xlm.hub import push_to_hub
from meta_xlm.model_card import write_model_card
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM
from meta_xlm.trainer import MetaXLMTrainer, MetaXLMTrainingArguments

logger = logging.getLogger("pretrain")


@dataclass
class DataArguments:
    languages: list[str] = field(
        default_factory=lambda: ["en"], metadata={"help": "language codes, in model order"}
    )
    text_dir: str | None = field(
        default=None, metadata={"help": "folder with one sub-folder of text per language"}
    )
    corpus_files: list[str] = field(
        default_factory=list,
        metadata={"help": "LANG=PATH entries (file or folder), override text_dir per language"},
    )
    hub_dataset: str | None = field(
        default=None, metadata={"help": "Hub dataset for languages without local text"}
    )
    hub_config_template: str | None = field(
        default=None, metadata={"help": "Hub config name, e.g. 20231101.{lang}"}
    )
    validation_sentences: int = field(default=1000, metadata={"help": "held-out sentences per language"})
    meta_validation_sentences: int = field(
        default=0,
        metadata={"help": "+meta adpt: sentences per language held out for the meta objective, disjoint from the "
                          "training and validation (evaluation) text; required (>= 1) with meta_learning"},
    )
    subsample: list[str] = field(
        default_factory=list, metadata={"help": "LANG=N entries: keep exactly N training sentences (frl/rul)"}
    )
    temperature: float = field(default=1 / 0.7, metadata={"help": "language sampling p_i ∝ (L_i/ΣL)^(1/T)"})
    block_size: int = field(default=256, metadata={"help": "tokens per training stream block (XLM: 256)"})
    mlm_probability: float = field(default=0.15)
    data_seed_offset: int = field(default=0, metadata={"help": "added to seed for splits/subsampling"})
    data_cache_dir: str | None = field(
        default=None, metadata={"help": "datasets Arrow cache (default HF cache)"}
    )
    preprocessing_num_workers: int | None = field(default=None)


@dataclass
class TokenizerArguments:
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "load instead of training one"}
    )
    vocab_size: int = field(default=32000, metadata={"help": "shared BPE vocabulary (paper: 32k)"})
    tokenizer_training_sentences: int = field(default=1_000_000)
    tokenizer_temperature: float = field(default=1 / 0.7)


@dataclass
class ModelArguments:
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    language_modules: str | list[str] = field(
        default="none", metadata={"help": "none | ffn | attention | adapters | layernorm, or several"}
    )
    shared_adapters: bool = False
    adapter_reduction_factor: int = 4
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514


@dataclass
class ExtensionArguments:
    extend_model: str | None = field(
        default=None,
        metadata={"help": "pretrained MetaXLM masked LM to add languages to: `languages` = its languages + new ones"},
    )
    extend_init_from: str | None = field(
        default=None,
        metadata={"help": "start the new languages' modules as copies of this language's (default: fresh)"},
    )
    extend_train_embeddings: bool = field(
        default=False, metadata={"help": "also train the word embeddings (the old languages' outputs then change)"}
    )


ARGUMENT_CLASSES = (
    DataArguments, TokenizerArguments, ModelArguments, ExtensionArguments, MetaXLMTrainingArguments
)  # fmt: skip


def subsample_sizes(entries: list[str]) -> dict[str, int]:
    sizes = {}
    for language, values in grouped_key_values(entries, "subsample").items():
        if len(values) != 1 or not values[0].isdigit():
            raise SystemExit(
                f"error: subsample for {language!r} is {values}: expected one LANG=N, N a positive integer"
            )
        sizes[language] = int(values[0])
    return sizes


def resolve_resume(training_args) -> str | None:
    if training_args.resume_from_checkpoint != "latest":
        return training_args.resume_from_checkpoint
    checkpoint = latest_complete_checkpoint(training_args.output_dir)
    logger.info("resume_from_checkpoint=latest -> %s", checkpoint)
    return str(checkpoint) if checkpoint is not None else None


def build_tokenizer(tokenizer_args, train_sentences, training_args, resume: str | None):
    """Given tokenizer, else the one saved in the checkpoint being resumed, else train one (main process)."""
    saved = Path(training_args.output_dir) / "tokenizer"
    if tokenizer_args.tokenizer_name_or_path is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_args.tokenizer_name_or_path)
    elif resume is not None:
        tokenizer = AutoTokenizer.from_pretrained(resume)  # the Trainer saves it in every checkpoint
    elif not training_args.should_save:
        tokenizer = AutoTokenizer.from_pretrained(saved)  # the main process trained it first
    else:
        tokenizer = train_shared_tokenizer(
            train_sentences,
            vocab_size=tokenizer_args.vocab_size,
            temperature=tokenizer_args.tokenizer_temperature,
            num_sentences=tokenizer_args.tokenizer_training_sentences,
            seed=training_args.seed,
        )
        tokenizer.save_pretrained(saved)
    check_special_token_ids(tokenizer)
    return tokenizer


def new_languages(extension_args, languages: list[str]) -> list[str]:
    """The languages `--extend_model` adds (checked before any data is read)."""
    old = MetaXLMConfig.from_pretrained(extension_args.extend_model).languages
    new = languages[len(old) :]
    if languages[: len(old)] != old or not new:
        raise SystemExit(
            f"error: with --extend_model, --languages {languages} must be the model's languages {old} followed by "
            "at least one new language"
        )
    return new


def extend_pretrained(extension_args, languages: list[str]) -> tuple[MetaXLMForMaskedLM, list[str]]:
    """The model in `extend_model` with the languages after its own added, only their modules trainable."""
    new = new_languages(extension_args, languages)
    model = MetaXLMForMaskedLM.from_pretrained(extension_args.extend_model)
    for code in new:
        model.add_language(code, init_from=extension_args.extend_init_from)
    trainable = model.train_only_languages(new, embeddings=extension_args.extend_train_embeddings)
    logger.info("extending %s with %s: %d trainable tensors", extension_args.extend_model, new, len(trainable))
    return model, new


def take_over_hub_publishing(training_args) -> dict | None:
    """The Hub push this run asked for (--push_to_hub --hub_model_id [--hub_revision] [--hub_private_repo]).

    The recipe pushes once, after saving, with meta_xlm.hub.push_to_hub; the Trainer's own push is switched off
    because it contacts the Hub when the Trainer is built and pushes every save.
    """
    if not training_args.push_to_hub:
        return None
    if not training_args.hub_model_id:
        raise SystemExit("error: --push_to_hub needs --hub_model_id (the Hub repository, e.g. user/meta-xlm-en-sw)")
    training_args.push_to_hub = False
    return {
        "repo_id": training_args.hub_model_id,
        "revision": training_args.hub_revision,
        "private": training_args.hub_private_repo,
        "token": training_args.hub_token,
    }


def check_field_combinations(data_args, training_args) -> None:
    """Rules across argument classes, checked before any work (also by recipes/study.py --check)."""
    if training_args.meta_learning and data_args.meta_validation_sentences < 1:
        raise SystemExit(
            "error: meta_learning needs meta_validation_sentences >= 1 (got "
            f"{data_args.meta_validation_sentences}): the meta objective reads its own held-out split, never the "
            "validation text that perplexity is reported on"
        )


def pretraining_data(data_args, tokenizer_args, training_args, resume: str | None):
    """The corpora split (training / validation / meta-validation), the tokenizer and the blocks, built on the main
    process first (the others read its cache). Returns (tokenizer, blocks, validation sentences)."""
    seed = training_args.seed + data_args.data_seed_offset
    with training_args.main_process_first(desc="corpora, tokenizer, blocks"):
        corpora = load_corpora(
            data_args.languages,
            corpus_paths=grouped_key_values(data_args.corpus_files, "corpus_files", "LANG=PATH"),
            text_dir=data_args.text_dir,
            hub_dataset=data_args.hub_dataset,
            hub_config_template=data_args.hub_config_template,
            cache_dir=data_args.data_cache_dir,
        )
        train_sentences, validation_sentences, meta_validation_sentences = pretraining_splits(
            corpora, data_args.validation_sentences, subsample_sizes(data_args.subsample), seed,
            data_args.meta_validation_sentences if training_args.meta_learning else None,
        )
        tokenizer = build_tokenizer(tokenizer_args, train_sentences, training_args, resume)
        data = build_blocks(
            train_sentences,
            validation_sentences,
            tokenizer,
            data_args.languages,
            data_args.block_size,
            data_args.temperature,
            num_proc=data_args.preprocessing_num_workers,
            meta_validation=meta_validation_sentences,
        )
    logger.info("language sampling probabilities: %s", data.sampling_probabilities)
    if training_args.meta_learning:
        logger.info(
            "meta objective: the meta-validation split (%d sentences per language, disjoint from the training and "
            "validation text), not the validation split that perplexity is reported on",
            data_args.meta_validation_sentences,
        )
    return tokenizer, data, validation_sentences


def model_to_pretrain(data_args, model_args, extension_args, training_args, tokenizer, sampling_probabilities):
    """A new model, or (`--extend_model`) a pretrained one with new languages whose steps alone are sampled.
    Returns (model, language sampling probabilities)."""
    if extension_args.extend_model:
        model, added = extend_pretrained(extension_args, data_args.languages)
        tokenizer.init_kwargs["languages"] = list(data_args.languages)
        # the old languages keep their validation data but get no training steps
        return model, {code: p if code in added else 0.0 for code, p in sampling_probabilities.items()}
    config = MetaXLMConfig(
        vocab_size=len(tokenizer),
        languages=data_args.languages,
        default_language=data_args.languages[0] if len(data_args.languages) == 1 else None,
        # Pretraining projects only the masked positions onto the vocabulary (~a quarter of the FLOPs at
        # vocab 8k / hidden 256). Compiled runs keep dense logits: the selection's data-dependent shape
        # would break the compiled graph.
        sparse_prediction=not training_args.torch_compile,
        **asdict(model_args),
    )
    return MetaXLMForMaskedLM(config), sampling_probabilities


def pretraining_trainer(model, tokenizer, data, data_args, training_args, sampling_probabilities) -> MetaXLMTrainer:
    trainer = MetaXLMTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=MLMCollator(
            tokenizer,
            mlm_probability=data_args.mlm_probability,
            seed=training_args.seed,
            # one-language batches say so (`single_language`), so the model routes them without reading
            # lang_ids; language-balanced steps split every tensor of a batch, so they get no such entry
            languages=None if training_args.language_balanced_steps else list(model.config.languages),
        ),
        processing_class=tokenizer,
        language_sampling_probs=sampling_probabilities,
        meta_validation_datasets=data.meta_validation,
        callbacks=[CheckpointCompletionCallback()],
    )
    add_callback_before_reporters(trainer, LanguagePerplexityCallback(data_args.languages))
    return trainer


def save_outputs(output_dir: Path, tokenizer, argument_groups: tuple, final_perplexity: dict,
                 validation_sentences, num_processes: int, publish: dict | None, datasets: list[str]) -> None:
    """What the main process writes beside the model: tokenizer, resolved config, perplexities, the tokenizer's
    scale, the model card; then the Hub push if one was asked for."""
    tokenizer.save_pretrained(output_dir)
    resolved = {name: value for args in argument_groups for name, value in arguments_to_dict(args).items()}
    (output_dir / "pretrain_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    (output_dir / "perplexity.json").write_text(json.dumps(final_perplexity, indent=2), encoding="utf-8")
    # the scale that makes the perplexities of runs with different tokenizers comparable (bits per character)
    (output_dir / "characters_per_token.json").write_text(
        json.dumps(characters_per_token(tokenizer, validation_sentences), indent=2), encoding="utf-8"
    )
    write_model_card(output_dir, model_id=publish["repo_id"] if publish else None, datasets=datasets,
                     num_processes=num_processes)  # fmt: skip
    logger.info("validation perplexity: %s", final_perplexity)
    logger.info("saved model, tokenizer, pretrain_config.yaml and README.md to %s", output_dir)
    if publish is not None:
        commit = push_to_hub(output_dir, **publish)
        logger.info("pushed %s to %s (commit %s)", output_dir, publish["repo_id"], commit.oid)


def main(argv: list[str]) -> None:
    argument_groups = parse_config_and_args(ARGUMENT_CLASSES, argv)
    data_args, tokenizer_args, model_args, extension_args, training_args = argument_groups
    if extension_args.extend_model:
        new_languages(extension_args, data_args.languages)
        tokenizer_args.tokenizer_name_or_path = tokenizer_args.tokenizer_name_or_path or extension_args.extend_model
    check_field_combinations(data_args, training_args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    reuse_freed_memory_when_on(training_args.device)
    resume = resolve_resume(training_args)
    publish = take_over_hub_publishing(training_args)
    tokenizer, data, validation_sentences = pretraining_data(data_args, tokenizer_args, training_args, resume)

    set_seed(training_args.seed)  # the Trainer seeds only after the model exists: seed its initialisation here
    model, sampling_probabilities = model_to_pretrain(
        data_args, model_args, extension_args, training_args, tokenizer, data.sampling_probabilities
    )
    trainer = pretraining_trainer(model, tokenizer, data, data_args, training_args, sampling_probabilities)
    trainer.train(resume_from_checkpoint=resume)

    metrics = trainer.evaluate()
    final_perplexity = {lang: perplexity(metrics[f"eval_{lang}_loss"]) for lang in data_args.languages}
    # the saved model answers as any MaskedLM does (logits (B, T, V)); sparse prediction was a training saving
    trainer.model.config.sparse_prediction = False
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json: the steps the model card reports
    if trainer.is_world_process_zero():
        save_outputs(Path(training_args.output_dir), tokenizer, argument_groups, final_perplexity,
                     validation_sentences, training_args.world_size, publish,
                     [data_args.hub_dataset] if data_args.hub_dataset else [])  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
    leave_process_group()
