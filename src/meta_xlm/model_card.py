"""Model cards for MetaXLM checkpoints, filled from the run (model_cards/TEMPLATE.md; README there explains it).

`write_model_card(output_dir, ...)` writes `output_dir/README.md`:
- metadata: `language:` = config.languages, license, datasets, `library_name: transformers`, tags (with the
  variant), `pipeline_tag`, `model-index` built from downstream metrics files;
- the variant (Mono / JointPair / JointTri + ffn / + attn / + adpt / + share adpt / + meta adpt) from the config and
  the training configuration (`meta_learning`);
- training set-up (steps, batch, precision, learning rate, hardware), from the run's configuration (the
  `*_config.yaml` a recipe writes beside the weights: TrainingArguments fields) and `trainer_state.json`;
- results, intended use, limitations (e.g. the negative interference found), the exact code commit, the
  paper's citation and usage code that runs as written.

Metrics files: one record per fine-tuning run, as `recipes/finetune.py` writes it (format and reader:
`meta_xlm.tasks.records`). Every numeric score becomes one model-index entry (task, dataset, language config,
metric, setting).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template

import torch
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.data import bits_per_character
from meta_xlm.meta import DEFAULT_HYPERGRADIENT
from meta_xlm.table_output import markdown_table
from meta_xlm.tasks.records import check_metrics_record, load_metrics_records

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPO_ROOT / "model_cards" / "TEMPLATE.md"
PAPER_URL = "https://arxiv.org/abs/2010.03017"
CITATION = """@inproceedings{wang2020negative,
    title = "On Negative Interference in Multilingual Models: Findings and A Meta-Learning Treatment",
    author = "Wang, Zirui and Lipton, Zachary C. and Tsvetkov, Yulia",
    booktitle = "Proceedings of the 2020 Conference on Empirical Methods in Natural Language Processing (EMNLP)",
    year = "2020",
    eprint = "2010.03017",
    archivePrefix = "arXiv",
    url = "https://arxiv.org/abs/2010.03017",
}"""

# Downstream tasks of the paper (Section 3.2): Hub task type, dataset id and a readable name.
TASKS = {
    "ner": ("token-classification", "wikiann", "WikiAnn NER"),
    "pos": ("token-classification", "universal_dependencies", "Universal Dependencies POS"),
    "qa": ("question-answering", "tydiqa", "TyDiQA-GoldP"),
    "nli": ("text-classification", "xnli", "XNLI"),
}
SETTINGS = {"within": "within-language", "zero_shot": "zero-shot cross-lingual"}
LANGUAGE_MODULE_SUFFIX = {"ffn": " + ffn", "attention": " + attn", "adapters": " + adpt", "layernorm": " + ln"}
PIPELINE_TAGS = {
    "MetaXLMForMaskedLM": "fill-mask",
    "MetaXLMForTokenClassification": "token-classification",
    "MetaXLMForQuestionAnswering": "question-answering",
    "MetaXLMForSequenceClassification": "text-classification",
    "MetaXLMModel": "feature-extraction",
}
AUTO_CLASSES = {
    "MetaXLMForMaskedLM": "AutoModelForMaskedLM",
    "MetaXLMForTokenClassification": "AutoModelForTokenClassification",
    "MetaXLMForQuestionAnswering": "AutoModelForQuestionAnswering",
    "MetaXLMForSequenceClassification": "AutoModelForSequenceClassification",
    "MetaXLMModel": "AutoModel",
}
DEFAULT_INTENDED_USE = (
    "Research on multilingual pretraining: negative interference between languages, language-specific modules "
    "and meta-learned adapters. The masked LM is a starting point for fine-tuning on the paper's downstream tasks "
    "(NER, POS, TyDiQA-GoldP, XNLI) in its languages; it is not a production system."
)
DEFAULT_LIMITATIONS = (
    "- Trained on the listed languages only; other languages (and `lang_ids` outside `config.languages`) are "
    "unsupported.\n"
    "- Multilingual training can hurt a language compared with a monolingual model (negative interference, the "
    "paper's finding); compare against the Mono baseline before relying on a language's scores.\n"
    "- Small pretraining corpora (Wikipedia-scale or smaller) carry their biases and errors into the model."
)
USAGE_FILL_MASK = """import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

model_id = "$model_id"
tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True)
model = AutoModelForMaskedLM.from_pretrained(model_id, trust_remote_code=True).eval()

language = "$language"  # one of model.config.languages
inputs = tokenizer([f"This is a {tokenizer.mask_token} sentence."], return_tensors="pt")
lang_ids = torch.full((inputs["input_ids"].shape[0],), model.config.languages.index(language))
with torch.no_grad():
    logits = model(**inputs, lang_ids=lang_ids).logits  # (batch, length, vocabulary)
masked = inputs["input_ids"][0].tolist().index(tokenizer.mask_token_id)
print(tokenizer.convert_ids_to_tokens(logits[0, masked].topk(5).indices.tolist()))"""
USAGE_OTHER_HEAD = """import torch
from transformers import $auto_class, AutoTokenizer

model_id = "$model_id"
tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True)
model = $auto_class.from_pretrained(model_id, trust_remote_code=True).eval()

language = "$language"  # one of model.config.languages
inputs = tokenizer(["This is a sentence."], return_tensors="pt")
lang_ids = torch.full((inputs["input_ids"].shape[0],), model.config.languages.index(language))
with torch.no_grad():
    outputs = model(**inputs, lang_ids=lang_ids)
print({name: tuple(value.shape) for name, value in outputs.items() if isinstance(value, torch.Tensor)})"""


# ----------------------------------------------------------------------------------------------------------------
# Facts about the run
# ----------------------------------------------------------------------------------------------------------------
def variant_name(config: MetaXLMConfig, meta_learning: bool = False) -> str:
    """The paper's model name: Mono / JointPair / JointTri + ffn / attn / adpt / share adpt / meta adpt.

    A list of kinds names each, e.g. ["ffn", "adapters"] -> "JointPair + ffn + meta adpt" when meta-learned.
    A meta-learned model without adapters (the meta step trains its ffn / attention copies): "(meta-learned)".
    """
    count = len(config.languages)
    base = {1: "Mono", 2: "JointPair", 3: "JointTri"}.get(count, f"Joint ({count} languages)")
    kinds = config.language_module_kinds
    if meta_learning and not kinds:
        raise ValueError(
            f"meta_learning=True needs language-specific parameters to meta-learn, but language_modules="
            f"{config.language_modules!r}"
        )
    name = base + "".join(LANGUAGE_MODULE_SUFFIX[kind] for kind in kinds if kind != "adapters")
    if config.has_language_module("adapters"):
        return name + adapter_suffix(config.shared_adapters, meta_learning)
    return name + (" (meta-learned)" if meta_learning else "")


def adapter_suffix(shared_adapters: bool, meta_learning: bool) -> str:
    if shared_adapters:
        return " + share adpt (meta-learned)" if meta_learning else " + share adpt"
    return " + meta adpt" if meta_learning else " + adpt"


def code_commit(source_dir: str | os.PathLike | None = None) -> str:
    """`git rev-parse HEAD` of the code (with "+ uncommitted changes" when the tree is dirty), or a clear unknown."""
    directory = Path(source_dir) if source_dir is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as error:
        logger.info("code commit unknown: %s is not a git checkout (%s)", directory, error)
        return "unknown (the code was not run from a git checkout)"
    return f"{commit} + uncommitted changes" if dirty else commit


def describe_hardware() -> str:
    """This machine: GPUs when present, otherwise the CPU and its core count."""
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} × {names[0]}" if len(set(names)) == 1 else ", ".join(names)
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def load_training_config(
    source: Mapping | str | os.PathLike | None, output_dir: Path
) -> tuple[dict, str | None]:
    """(configuration, file name): a mapping as given, a YAML/JSON file, or the one `*_config.yaml` of output_dir."""
    if isinstance(source, Mapping):
        return dict(source), None
    if source is None:
        found = sorted(output_dir.glob("*_config.yaml"))
        if len(found) > 1:
            raise ValueError(
                f"{output_dir} has several run configurations {[p.name for p in found]}: pass one"
            )
        if not found:
            return {}, None
        source = found[0]
    path = Path(source)
    text = path.read_text(encoding="utf-8")
    values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(values, Mapping):
        raise TypeError(f"{path}: expected a mapping of training settings, got {type(values).__name__}")
    return dict(values), path.name


def training_rows(
    training_config: Mapping, trainer_state: Mapping | None, hardware: str, num_processes: int | None
) -> list[tuple[str, str]]:
    """(setting, value) rows of the training set-up; absent settings are left out, not guessed."""
    rows = []
    if trainer_state is not None and "global_step" in trainer_state:
        rows.append(("optimizer steps", str(trainer_state["global_step"])))
    elif training_config.get("max_steps", -1) > 0:
        rows.append(("optimizer steps (max_steps)", str(training_config["max_steps"])))
    if "per_device_train_batch_size" in training_config:
        per_device = training_config["per_device_train_batch_size"]
        accumulation = training_config.get("gradient_accumulation_steps", 1)
        batch = f"{per_device} per device × {accumulation} accumulation steps"
        if num_processes is not None:
            batch = f"{per_device * accumulation * num_processes} ({batch} × {num_processes} processes)"
        rows.append(("batch (sequences per step)", batch))
    if "learning_rate" in training_config:
        rows.append(("learning rate", str(training_config["learning_rate"])))
    if training_config.get("meta_learning"):
        # Algorithm 1: α defaults to the shared learning rate β, as in the paper.
        alpha = training_config.get("meta_learning_rate") or training_config.get("learning_rate")
        rows.append(("meta learning rate (α)", str(alpha)))
        rows.append(("hypergradient", str(training_config.get("hypergradient", DEFAULT_HYPERGRADIENT))))
        rows.extend(lookahead_rows(training_config, trainer_state))
        rows.append(("meta objective data", f"meta-validation split, {training_config.get('meta_validation_sentences')} "
                                            "sentences per language, disjoint from training and validation text"))
    if training_config.get("gradient_surgery"):
        granularity = training_config.get("surgery_granularity", "model")
        rows.append(("gradient surgery", f"{training_config['gradient_surgery']} per {granularity}"))
    if training_config.get("language_loss_weights"):
        rows.append(("language loss weights", ", ".join(training_config["language_loss_weights"])))
    if "seed" in training_config:
        rows.append(("seed", str(training_config["seed"])))
    precision = "bf16" if training_config.get("bf16") else "fp16" if training_config.get("fp16") else "fp32"
    if training_config:
        rows.append(("precision", precision))
    rows.append(("hardware", hardware))
    return rows


def lookahead_rows(training_config: Mapping, trainer_state: Mapping | None) -> list[tuple[str, str]]:
    """The meta step's lookahead and meta objective (issue 27), and their logged diagnostics averaged over the
    run. Configs written before issue 27 have none of these settings: they ran the paper's (SGD lookahead at θ's
    learning rate, every language)."""
    kind = training_config.get("lookahead", "sgd")
    rate = training_config.get("lookahead_lr")
    k = training_config.get("meta_languages_per_step")
    rows = [("lookahead θ'", "θ's AdamW step (optimizer)" if kind == "optimizer" else "θ − β g (sgd, Eq. 3)"),
            ("lookahead rate", "θ's learning rate" if rate is None else str(rate)),
            ("meta objective languages per step (k)", "all" if k is None else str(k))]
    logs = (trainer_state or {}).get("log_history", [])
    for key, label in (("meta_objective_languages", "meta objective languages per step (logged mean)"),
                       ("meta_higher_order_ratio", "higher-order share ‖higher-order‖ / ‖direct‖ (mean)"),
                       ("meta_lookahead_share", "lookahead share ‖Δ direct‖ / ‖direct‖ (mean)")):
        values = [entry[key] for entry in logs if key in entry]
        if values:
            rows.append((label, f"{sum(values) / len(values):.3g}"))
    return rows


def eval_results(records: Sequence[Mapping]) -> list[EvalResult]:
    """One model-index entry per (task, setting, language, metric) of the metrics records."""
    results = []
    for record in records:
        check_metrics_record(record, record.get("_path", "metrics record"))
        task, setting = record["task"], record["setting"]
        task_type, dataset_id, dataset_title = TASKS[task]
        for language, scores in record["scores"].items():
            for metric, value in scores.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue  # counts and notes beside the scores are not results
                results.append(
                    EvalResult(
                        task_type=task_type,
                        dataset_type=dataset_id,
                        dataset_name=f"{dataset_title} ({language})",
                        dataset_config=language,
                        dataset_split=record.get("split"),
                        metric_type=metric,
                        metric_value=value,
                        metric_name=f"{metric} ({SETTINGS[setting]})",
                    )
                )
    return results


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------
def architecture_table(config: MetaXLMConfig) -> str:
    rows = [
        ("languages (`config.languages`, indexed by `lang_ids`)", ", ".join(config.languages)),
        ("language-specific modules", ", ".join(config.language_module_kinds) or "none"),
        ("layers / hidden / heads / FFN",
         f"{config.num_hidden_layers} / {config.hidden_size} / {config.num_attention_heads} / {config.intermediate_size}"),
        ("vocabulary", str(config.vocab_size)),
    ]  # fmt: skip
    if config.has_language_module("adapters"):
        rows.append(
            (
                "adapter bottleneck",
                f"{config.adapter_size} ({'shared' if config.shared_adapters else 'per language'})",
            )
        )
    return markdown_table(["", ""], rows)


def training_section(
    training_config: Mapping,
    training_config_file: str | None,
    trainer_state: Mapping | None,
    hardware: str | None,
    num_processes: int | None,
) -> str:
    """The training set-up table (hardware default: this machine, labelled so) and where the config is."""
    hardware = hardware or f"{describe_hardware()} (the machine that wrote this card)"
    table = markdown_table(
        ["setting", "value"], training_rows(training_config, trainer_state, hardware, num_processes)
    )
    return table + "\n\n" + (
        f"The full run configuration is `{training_config_file}` in this repository."
        if training_config_file
        else "No run configuration file was recorded with this checkpoint."
    )


def validation_section(perplexity: Mapping[str, float], characters: Mapping[str, float]) -> str:
    """Final validation perplexity per language and, where the tokenizer's characters per token on the same text is
    known, bits per character: the number to compare with a checkpoint that has another tokenizer."""
    if not perplexity:
        return ""
    rows = [(language, f"{value:.2f}", f"{characters[language]:.2f}" if language in characters else "–",
             f"{bits_per_character(value, characters[language]):.3f}" if language in characters else "–")
            for language, value in perplexity.items()]  # fmt: skip
    table = markdown_table(["language", "perplexity (per token)", "characters per token", "bits per character"], rows)
    return f"Masked-LM validation perplexity at the end of pretraining (held-out text of each language):\n\n{table}\n\n"


def results_section(records: Sequence[Mapping]) -> str:
    if not records:
        return "No downstream results were recorded for this checkpoint."
    rows = []
    for record in records:
        for language, scores in record["scores"].items():
            cells = ", ".join(f"{m} {v:.2f}" for m, v in scores.items() if isinstance(v, (int, float)))
            rows.append((TASKS[record["task"]][2], SETTINGS[record["setting"]], language, cells))
    return markdown_table(["task", "setting", "language", "scores"], rows)


def usage_code(config: MetaXLMConfig, model_id: str) -> str:
    architecture = (config.architectures or ["MetaXLMForMaskedLM"])[0]
    if architecture not in AUTO_CLASSES:
        raise ValueError(f"config.architectures[0]={architecture!r}: expected one of {sorted(AUTO_CLASSES)}")
    language = config.default_language or config.languages[0]
    if architecture == "MetaXLMForMaskedLM":
        return Template(USAGE_FILL_MASK).substitute(model_id=model_id, language=language)
    return Template(USAGE_OTHER_HEAD).substitute(
        model_id=model_id, language=language, auto_class=AUTO_CLASSES[architecture]
    )


def usage_snippet(card: ModelCard | str) -> str:
    """The Python code of a card's "How to use" section (what tests run)."""
    text = card.text if isinstance(card, ModelCard) else card
    match = re.search(r"## How to use.*?```python\n(.*?)```", text, flags=re.DOTALL)
    if match is None:
        raise ValueError("the model card has no ```python block under '## How to use'")
    return match.group(1)


def render_model_card(
    config: MetaXLMConfig,
    *,
    model_id: str,
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    tags: Sequence[str] = (),
    training_config: Mapping | None = None,
    training_config_file: str | None = None,
    trainer_state: Mapping | None = None,
    metrics: Sequence[Mapping] = (),
    validation_perplexity: Mapping[str, float] | None = None,
    characters_per_token: Mapping[str, float] | None = None,
    hardware: str | None = None,
    num_processes: int | None = None,
    base_model: str | None = None,
    intended_use: str = DEFAULT_INTENDED_USE,
    limitations: str = DEFAULT_LIMITATIONS,
    findings: str | None = None,
    commit: str | None = None,
    template_path: str | os.PathLike = DEFAULT_TEMPLATE,
) -> ModelCard:
    """A ModelCard for a checkpoint with this config; see `write_model_card` for the arguments."""
    training_config = dict(training_config or {})
    variant = variant_name(config, meta_learning=bool(training_config.get("meta_learning", False)))
    title = f"MetaXLM {variant} ({'-'.join(config.languages)})"
    architecture = (config.architectures or ["MetaXLMForMaskedLM"])[0]
    card_data = ModelCardData(
        language=list(config.languages),
        license=license,
        library_name="transformers",
        datasets=list(datasets) or None,
        tags=["meta-xlm", "multilingual", "negative-interference", variant_tag(variant), *tags],
        pipeline_tag=PIPELINE_TAGS[architecture],
        base_model=base_model,
        model_name=title,
        eval_results=eval_results(metrics) or None,
    )
    summary = f"Languages: {', '.join(config.languages)}." + (
        f" Initialised from `{base_model}`." if base_model else ""
    )
    if not Path(template_path).is_file():
        raise FileNotFoundError(f"model card template {template_path} is missing (pass template_path=...)")
    text = Template(Path(template_path).read_text(encoding="utf-8")).substitute(
        card_data=card_data.to_yaml(),
        title=title,
        summary=summary,
        variant=variant,
        architecture=architecture_table(config),
        training=training_section(
            training_config, training_config_file, trainer_state, hardware, num_processes
        ),
        results=validation_section(validation_perplexity or {}, characters_per_token or {}) + results_section(metrics),
        usage=usage_code(config, model_id),
        intended_use=intended_use,
        limitations=limitations + (f"\n- Findings of this run: {findings}" if findings else ""),
        code=f"meta-xlm commit: `{commit or code_commit()}`. Paper: {PAPER_URL}.",
        citation=CITATION,
    )
    return ModelCard(text)


def variant_tag(variant: str) -> str:
    """'JointPair + meta adpt' -> 'jointpair-meta-adpt' (a Hub tag)."""
    return re.sub(r"[^a-z0-9]+", "-", variant.lower()).strip("-")


def _json_if_present(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    model_id: str | None = None,
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    tags: Sequence[str] = (),
    training_config: Mapping | str | os.PathLike | None = None,
    metrics_files: Sequence[str | os.PathLike] = (),
    hardware: str | None = None,
    num_processes: int | None = None,
    base_model: str | None = None,
    intended_use: str = DEFAULT_INTENDED_USE,
    limitations: str = DEFAULT_LIMITATIONS,
    findings: str | None = None,
    copy_to: str | os.PathLike | None = None,
) -> Path:
    """Write `output_dir/README.md`, the model card of the checkpoint saved in `output_dir`.

    model_id: what the usage code loads (the Hub repo id; default: the folder's absolute path).
    training_config: the run's settings (mapping, YAML/JSON file; default: the one `*_config.yaml` of output_dir).
    metrics_files: downstream metrics JSON files (format in the module docstring) -> model-index and results.
    hardware: where training ran (default: this machine, labelled as such). num_processes: data-parallel processes.
    findings: a sentence on what the run found (e.g. negative interference for a language), under Limitations.
    copy_to: also write the card there (e.g. model_cards/<name>.md).
    The validation perplexity per language (and bits per character) comes from the folder's perplexity.json and
    characters_per_token.json, which recipes/pretrain.py writes; a folder without them gets no such table.
    """
    root = Path(output_dir)
    config = MetaXLMConfig.from_pretrained(root)
    settings, settings_file = load_training_config(training_config, root)
    # the Trainer's state, and what recipes/pretrain.py writes beside the model (per-language perplexity and
    # characters per token); a folder may lack any of them
    trainer_state, perplexity, characters = (_json_if_present(root / name) for name in (
        "trainer_state.json", "perplexity.json", "characters_per_token.json"))
    card = render_model_card(
        config,
        model_id=model_id or str(root.resolve()),
        license=license,
        datasets=datasets,
        tags=tags,
        training_config=settings,
        training_config_file=settings_file,
        trainer_state=trainer_state,
        metrics=load_metrics_records(metrics_files),
        validation_perplexity=perplexity,
        characters_per_token=characters,
        hardware=hardware,
        num_processes=num_processes,
        base_model=base_model,
        intended_use=intended_use,
        limitations=limitations,
        findings=findings,
    )
    card.save(root / "README.md")
    if copy_to is not None:
        Path(copy_to).parent.mkdir(parents=True, exist_ok=True)
        card.save(copy_to)
    logger.info("wrote model card %s", root / "README.md")
    return root / "README.md"


__all__ = [
    "CITATION",
    "code_commit",
    "eval_results",
    "render_model_card",
    "usage_snippet",
    "variant_name",
    "write_model_card",
]
