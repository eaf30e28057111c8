"""A reproduction study as a grid of cells: pretraining runs × fine-tuning tasks × seeds, plus the analyses.

Every cell runs one of the package's own recipes (recipes/pretrain.py, recipes/finetune.py,
recipes/analyze_gradients.py) as a subprocess, on a YAML file the study writes into the cell's folder. A cell is
complete when its *record* exists: a small JSON file under the study's `records_dir` (committed with the results,
beside them), written atomically (temporary file + rename) only after the recipe succeeded, holding everything the
report needs (scores, final perplexities, tokens seen, the pretraining run's loss and perplexity curves). So:
- a rerun skips complete cells and the study can be stopped and restarted at any point;
- a cell killed half-way has no record: it is run again (pretraining resumes from its newest complete
  checkpoint; a fine-tuning cell starts over in an empty folder), never read half-written;
- the checkpoints under `runs_dir` are scratch: a fresh clone (or another machine) holds the records, so it skips
  the complete cells and goes on with the rest. Only a row whose pretraining is recorded but whose fine-tuning
  is not needs its checkpoint, and says so (see `pretrained_model`) — unless the study keeps its models
  (`keep_models`): then each pretraining cell also commits its final model in half precision beside the records
  and every fine-tuning cell reads that copy, so any row can be re-fine-tuned (e.g. under a new protocol)
  without pretraining it again;
- a fine-tuning cell's record keeps the dev curve of every grid point, the selected point and epoch, and whether
  the selected point converged (meta_xlm.tasks.finetuning.convergence).
`results.csv` and `report.md` are built from the records alone (meta_xlm.study_report).

Study file (YAML): see recipes/configs/study/small_en_sw.yaml. Each entry of `models` is a grid row: a
pretraining YAML (any recipes/pretrain.py config, e.g. recipes/configs/surgery/*.yaml) plus field overrides, and
its seeds; each entry of `tasks` is a recipes/finetune.py setting.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import split_torch_state_dict_into_shards
from huggingface_hub.constants import SAFETENSORS_INDEX_FILE, SAFETENSORS_SINGLE_FILE
from safetensors.torch import load_file, save_file

from meta_xlm.analysis.report import read_log_history
from meta_xlm.callbacks import latest_complete_checkpoint

logger = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@dataclass
class ModelSpec:
    """One pretraining row of the grid."""

    name: str  # folder and table name, e.g. "joint_pair"
    config: str  # a recipes/pretrain.py YAML file
    seeds: list[int]
    paper_row: str | None = None  # the paper's row name (meta_xlm.tasks.reference.MODELS), None: not in it
    overrides: dict = field(default_factory=dict)  # recipes/pretrain.py fields on top of `config`
    # Folder of this row's cells under runs_dir (default: `name`). A row of another study file with the same
    # runs_dir, records_dir, folder and resolved configuration then shares its cells (a record of another
    # configuration is an error, never reused): e.g. the treatments study's temperature_1.43 row is small_en_sw's joint_pair.
    runs: str | None = None
    # names of the study's tasks this row is fine-tuned on (default: all); a Mono row has no zero-shot source
    # language, and a row whose languages cover no task is a pretraining-only row (tasks: [])
    tasks: list[str] | None = None

    @property
    def run_name(self) -> str:
        return self.runs or self.name

    def fine_tunes(self, task: "TaskSpec") -> bool:
        return self.tasks is None or task.name in self.tasks


@dataclass
class TaskSpec:
    """One fine-tuning setting (recipes/finetune.py fields)."""

    task: str
    setting: str
    train_language: str
    eval_languages: list[str]
    overrides: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.task}_{self.setting}_{self.train_language}"


@dataclass
class StudySpec:
    name: str
    runs_dir: str  # checkpoints and cell folders (git-ignored scratch)
    results_dir: str  # results.csv, report.md, figures (committed)
    models: list[ModelSpec]
    tasks: list[TaskSpec]
    finetune: dict = field(default_factory=dict)  # recipes/finetune.py fields shared by every task
    finetune_seed: int = 0
    gradients: dict = field(default_factory=dict)  # {models: [...], + recipes/analyze_gradients.py fields}
    figures: dict = field(default_factory=dict)  # {perplexity_models, loss_models, loss_max_step}
    # the cells' records (committed; default <results_dir>/cells). Two study files that share runs_dir share it too.
    records_dir: str | None = None
    # Keep each pretraining cell's final model (half-precision weights, config, tokenizer: ~1.6 MB at the small
    # studies' size, 2.8 MB with seven languages' adapters, every file under 2 MB) under
    # <results_dir>/models/<row>/seed<N>, committed with the records; every fine-tuning cell reads that copy, so a
    # fresh clone re-fine-tunes any row without pretraining it again (keep_pretrained_model).
    keep_models: bool = False
    # results_dir of an earlier study of the same rows whose numbers and verdicts the report sets beside these
    # (e.g. the same grid fine-tuned under another protocol)
    compare_with: str | None = None

    def __post_init__(self):
        self.records_dir = self.records_dir or str(Path(self.results_dir) / "cells")

    def model(self, name: str) -> ModelSpec:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"no model {name!r} in study {self.name!r} (models: {[m.name for m in self.models]})")


def _build(cls, values: dict, where: str):
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    try:
        return cls(**values)
    except TypeError as error:
        raise ValueError(f"{where}: {error}") from None


def load_study(path: str | Path) -> StudySpec:
    """Read and check a study file; errors name the file, the entry and the key."""
    values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    models = [_build(ModelSpec, m, f"{path}: models[{i}]") for i, m in enumerate(values.pop("models", []))]
    tasks = [_build(TaskSpec, t, f"{path}: tasks[{i}]") for i, t in enumerate(values.pop("tasks", []))]
    study = _build(StudySpec, {**values, "models": models, "tasks": tasks}, str(path))
    names = [m.name for m in models]
    if not models or len(set(names)) != len(names):
        raise ValueError(f"{path}: models must be a non-empty list of distinct names, got {names}")
    run_names = [m.run_name for m in models]
    if len(set(run_names)) != len(run_names):
        raise ValueError(f"{path}: two models share a cell folder (`runs` or name): {run_names}")
    for model in models:
        if not model.seeds or not Path(model.config).is_file():
            raise ValueError(f"{path}: model {model.name!r} needs seeds and an existing config (got {model.config!r})")
    for name in [*study.gradients.get("models", []), *study.figures.get("loss_models", [])]:
        study.model(name)
    task_names = [task.name for task in tasks]
    for model in models:
        unknown = sorted(set(model.tasks or []) - set(task_names))
        if unknown:
            raise ValueError(f"{path}: model {model.name!r}: tasks {unknown} are not in the study's tasks {task_names}")
    return study


# ---------------------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------------------


def record_path(study: StudySpec, kind: str, run_name: str, seed: int, task: TaskSpec | None = None) -> Path:
    """Where the record of a cell lives: <records_dir>/<kind>/<row folder>/seed<N>.json (fine-tuning:
    .../seed<N>/<task>.json)."""
    folder = Path(study.records_dir) / kind / run_name
    return folder / f"seed{seed}" / f"{task.name}.json" if task else folder / f"seed{seed}.json"


def read_record(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_record(path: Path, summary: dict) -> None:
    """The cell is complete once this file exists: write a temporary file, then rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


@dataclass
class RecipeCost:
    """What one run of a recipe cost: wall seconds, and CPU seconds (user + system of the recipe's process and the
    children it waited for), which leave out time the process was stopped (a study paused for CI) or waiting for a
    core, so runs made beside other work compare when their thread counts are equal."""

    wall_s: float
    cpu_s: float


def run_recipe(script: str, config: dict, folder: Path, *extra: str) -> RecipeCost:
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "study_cell.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    command = [sys.executable, str(RECIPES / script), "--config", str(config_path), *extra]
    logger.info("$ %s", " ".join(command))
    started, cpu_started = time.time(), children_cpu_seconds()
    with (folder / "recipe.log").open("a", encoding="utf-8") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        raise RuntimeError(f"{script} failed (exit {completed.returncode}); see {folder / 'recipe.log'}")
    return RecipeCost(time.time() - started, children_cpu_seconds() - cpu_started)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pretrain_folder(study: StudySpec, run_name: str, seed: int) -> Path:
    return Path(study.runs_dir) / "pretrain" / run_name / f"seed{seed}"


def pretrain_config(model: ModelSpec, seed: int, folder: Path) -> dict:
    """The model's pretraining YAML + overrides, with this cell's seed and output folder.

    data_seed_offset = -seed keeps the held-out validation sentences the same for every seed (the recipe
    splits with seed + data_seed_offset), so perplexities of different seeds are comparable.
    """
    config = yaml.safe_load(Path(model.config).read_text(encoding="utf-8")) or {}
    return {**config, **model.overrides, "seed": seed, "data_seed_offset": -seed, "output_dir": str(folder)}


def run_pretrain_cell(study: StudySpec, model: ModelSpec, seed: int) -> dict:
    """Pretrain (model, seed); an interrupted run resumes from its newest complete checkpoint."""
    folder = pretrain_folder(study, model.run_name, seed)
    config = pretrain_config(model, seed, folder)
    previous = folder / "study_cell.yaml"
    if previous.is_file() and yaml.safe_load(previous.read_text(encoding="utf-8")) != config:
        shutil.rmtree(folder)  # checkpoints of another configuration: start over rather than resume them
    resumed = latest_complete_checkpoint(folder)  # the recipe resumes from it: this run times the steps after it
    cost = run_recipe("pretrain.py", config, folder, "--resume_from_checkpoint", "latest")
    summary = {**pretrain_summary(folder, config, cost, int(resumed.name.split("-")[-1]) if resumed else 0),
               "config": config}  # fmt: skip
    if study.keep_models:
        kept = kept_model_folder(study, model.run_name, seed)
        summary["kept_model"] = {"folder": str(kept), "sha256": keep_pretrained_model(folder, kept)}
    return summary


def pretrain_summary(folder: Path, config: dict, cost: RecipeCost, start_step: int = 0) -> dict:
    """Steps, validation perplexity, (expected) tokens seen per language and the loss and perplexity curves
    (`history`) of a finished pretraining run, and what its last run of the recipe cost: `wall_time_s`,
    `cpu_time_s` and `timed_steps`, the steps that run took from `start_step` (a resumed cell's earlier runs are
    not timed; the cost per step is cpu_time_s / timed_steps).

    Tokens per language = steps × batch × block × p_lang, p_lang the recipe's logged sampling probability: each
    optimizer step is one language's batch (LanguageBatchSampler), drawn with p_lang.
    """
    state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    probabilities = logged_sampling_probabilities(folder / "recipe.log")
    tokens_per_step = config["per_device_train_batch_size"] * config.get("gradient_accumulation_steps", 1) * config[
        "block_size"
    ]
    return {
        "kind": "pretrain",
        "steps": state["global_step"],
        "tokens_seen": {
            language: round(state["global_step"] * tokens_per_step * p) for language, p in probabilities.items()
        },
        "perplexity": json.loads((folder / "perplexity.json").read_text(encoding="utf-8")),
        **measured_characters_per_token(folder),
        "wall_time_s": round(cost.wall_s, 1),
        "cpu_time_s": round(cost.cpu_s, 1),
        "timed_steps": state["global_step"] - start_step,
        "history": curve_history(read_log_history(folder)),
    }


def measured_characters_per_token(folder: Path) -> dict:
    """{"characters_per_token": {language: ratio}} of the run's validation text, as recipes/pretrain.py measured
    it with the run's tokenizer (the scale of bits per character); {} for a run from before it was measured
    (`recipes/study.py --measure_characters_per_token true` adds it to such a record)."""
    path = folder / "characters_per_token.json"
    return {"characters_per_token": json.loads(path.read_text(encoding="utf-8"))} if path.is_file() else {}


CURVE_KEYS = ("_loss", "_perplexity")  # eval_<language>_loss / _perplexity: what perplexity_curve reads
# What a treatment did, per logging window: the shared-gradient cosines before/after surgery (per language pair),
# the share of the meta hypergradient that is higher-order, and how much the lookahead θ' moves Eq. 4's direct term
# (logged on logging steps) — the report averages them per run.
DIAGNOSTIC_KEYS = ("surgery_cosine_before/", "surgery_cosine_after/", "meta_higher_order_ratio", "meta_lookahead_share")


def keeps(key: str) -> bool:
    return key == "loss" or (key.startswith("eval_") and key.endswith(CURVE_KEYS)) or key.startswith(DIAGNOSTIC_KEYS)


def curve_history(history: list[dict]) -> list[dict]:
    """The trainer's log history cut to what the report reads: the step with its training loss, its validation
    losses and perplexities (meta_xlm.analysis.report.loss_curve and perplexity_curve) and DIAGNOSTIC_KEYS."""
    kept = []
    for entry in history:
        values = {k: v for k, v in entry.items() if keeps(k)}
        if values:
            kept.append({"step": entry["step"], **values})
    return kept


def logged_sampling_probabilities(log_path: Path) -> dict[str, float]:
    marker = "language sampling probabilities: "
    lines = [line for line in log_path.read_text(encoding="utf-8").splitlines() if marker in line]
    if not lines:
        raise ValueError(f"{log_path}: the pretraining log has no '{marker}' line")
    return yaml.safe_load(lines[-1].split(marker, 1)[1])


def kept_model_folder(study: StudySpec, run_name: str, seed: int) -> Path:
    return Path(study.results_dir) / "models" / run_name / f"seed{seed}"


KEPT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "perplexity.json",
              "characters_per_token.json")  # fmt: skip
# The repository takes files up to 2 MB: kept weights above this many bytes are split into shards (model-0000N-of-
# 0000M.safetensors + model.safetensors.index.json, which from_pretrained reads as it reads any sharded checkpoint).
# A seven-language model with adapters is 2.5 MB in half precision; the largest tensor (the embeddings) is ~1 MB.
KEPT_SHARD_BYTES = 1_500_000


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder, one file or the shards its index names, in order."""
    index = folder / SAFETENSORS_INDEX_FILE
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [folder / SAFETENSORS_SINGLE_FILE]


def keep_pretrained_model(source: Path, target: Path) -> str:
    """Copy what fine-tuning needs of a pretrained model folder to `target`: its config and tokenizer files and
    its weights in half precision (float16: 10 mantissa bits, the weights of these models are O(0.01-1), so the
    rounding is ~1e-4 relative and half the size of float32), in shards of at most KEPT_SHARD_BYTES. Written to a
    temporary folder, then renamed, so `target` is either whole or absent. Returns the SHA-256 of the kept weights
    files' bytes in order (recorded with the cell; of model.safetensors itself when there is one file).

    from_pretrained loads the kept model in float32 (config.json keeps the run's dtype), so a fine-tuning cell
    trains exactly as it would from the float32 original rounded to float16. A kept folder is a valid `source`:
    keeping it again gives the same tensors (e.g. to re-split a model kept before shards)."""
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for name in KEPT_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, temporary / name)
    weights = {key: value for path in weight_files(source) for key, value in load_file(path).items()}
    half = {key: value.half() if value.is_floating_point() else value for key, value in weights.items()}
    split = split_torch_state_dict_into_shards(half, max_shard_size=KEPT_SHARD_BYTES)
    for filename, keys in split.filename_to_tensors.items():
        save_file({key: half[key] for key in keys}, temporary / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (temporary / SAFETENSORS_INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(temporary, target)
    digest = hashlib.sha256()
    for path in weight_files(target):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def pretrained_model(study: StudySpec, model: ModelSpec, seed: int, checkpoints: bool = False) -> Path:
    """The folder of a recorded pretraining run that fine-tuning cells read: the kept copy when the study keeps
    its models, else the run folder under runs_dir, which also holds the checkpoints that gradient cells read
    (`checkpoints=True`; a kept model has the final weights only). A record whose model is gone (runs_dir is
    scratch: a fresh clone has none) cannot serve them: say what to do rather than fail inside a recipe."""
    kept = study.keep_models and not checkpoints
    folder = (kept_model_folder if kept else pretrain_folder)(study, model.run_name, seed)
    if not (folder / "config.json").is_file():
        record = record_path(study, "pretrain", model.run_name, seed)
        raise FileNotFoundError(
            f"{model.name} seed {seed}: its pretraining is recorded in {record} but the pretrained model is not in "
            f"{folder}. The row's remaining cells need it: delete "
            f"{record} to pretrain it again (its recorded results are replaced), or restore {folder}"
        )
    return folder


def finetune_folder(study: StudySpec, run_name: str, seed: int, task: TaskSpec) -> Path:
    return Path(study.runs_dir) / "finetune" / run_name / f"seed{seed}" / task.name


def finetune_config(study: StudySpec, model: ModelSpec, seed: int, task: TaskSpec) -> dict:
    return {
        **study.finetune,
        **task.overrides,
        "task": task.task,
        "setting": task.setting,
        "train_language": task.train_language,
        "eval_languages": task.eval_languages,
        "model_name_or_path": str(
            (kept_model_folder if study.keep_models else pretrain_folder)(study, model.run_name, seed)
        ),  # the folder pretrained_model checks
        "model_name": model.run_name,
        "output_dir": str(finetune_folder(study, model.run_name, seed, task)),
        "seed": study.finetune_seed,
    }


def run_finetune_cell(study: StudySpec, model: ModelSpec, seed: int, task: TaskSpec) -> dict:
    """Fine-tune the (model, seed) pretraining run on one task setting; a half-done cell starts over."""
    pretrained_model(study, model, seed)
    folder = finetune_folder(study, model.run_name, seed, task)
    shutil.rmtree(folder, ignore_errors=True)
    config = finetune_config(study, model, seed, task)
    cost = run_recipe("finetune.py", config, folder)
    record = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    shutil.rmtree(folder / "grid", ignore_errors=True)  # fine-tuned checkpoints: large, and no longer needed
    best = {key: value for key, value in record["selection"]["best"].items() if key != "checkpoint"}
    return {
        "kind": "finetune",
        "scores": record["scores"],
        "selection": best,  # the selected grid point, its best epoch and the convergence test of its dev curve
        "converged": best["converged"],
        "dev_curves": record["selection"]["grid"],  # every grid point's dev score per epoch
        "wall_time_s": round(cost.wall_s, 1),
        "cpu_time_s": round(cost.cpu_s, 1),
        "config": config,
    }


def gradients_folder(study: StudySpec, run_name: str, seed: int) -> Path:
    return Path(study.runs_dir) / "gradients" / run_name / f"seed{seed}"


def gradients_config(study: StudySpec, model: ModelSpec, seed: int) -> dict:
    settings = {key: value for key, value in study.gradients.items() if key != "models"}
    return {
        **settings,
        "run_dir": str(pretrain_folder(study, model.run_name, seed)),
        "output_dir": str(gradients_folder(study, model.run_name, seed)),
    }


def run_gradients_cell(study: StudySpec, model: ModelSpec, seed: int) -> dict:
    """Fig. 3: gradient cosine (pairs and the same-language baseline) over the run's checkpoints."""
    pretrained_model(study, model, seed, checkpoints=True)
    folder = gradients_folder(study, model.run_name, seed)
    shutil.rmtree(folder, ignore_errors=True)
    config = gradients_config(study, model, seed)
    cost = run_recipe("analyze_gradients.py", config, folder)
    with (folder / "gradient_conflict.csv").open(encoding="utf-8") as handle:
        rows = [{**row, "step": int(row["step"]), "cosine": float(row["cosine"])} for row in csv.DictReader(handle)]
    return {"kind": "gradients", "rows": rows, "wall_time_s": round(cost.wall_s, 1), "cpu_time_s": round(cost.cpu_s, 1),
            "config": config}  # fmt: skip


def cells(study: StudySpec, only_models: list[str] | None = None):
    """Every cell in run order: seed by seed, so that a partial study has every model at its first seeds."""
    models = [m for m in study.models if not only_models or m.name in only_models]
    gradient_models = set(study.gradients.get("models", []))
    max_seeds = max(len(m.seeds) for m in models)
    for index in range(max_seeds):
        for model in models:
            if index >= len(model.seeds):
                continue
            seed = model.seeds[index]
            yield ("pretrain", model, seed, None)
            for task in filter(model.fine_tunes, study.tasks):
                yield ("finetune", model, seed, task)
            if model.name in gradient_models:
                yield ("gradients", model, seed, None)


def cell_record(study: StudySpec, kind: str, model: ModelSpec, seed: int, task: TaskSpec | None) -> Path:
    return record_path(study, kind, model.run_name, seed, task)


def cell_config(study: StudySpec, kind: str, model: ModelSpec, seed: int, task: TaskSpec | None) -> dict:
    if kind == "pretrain":
        return pretrain_config(model, seed, pretrain_folder(study, model.run_name, seed))
    if kind == "finetune":
        return finetune_config(study, model, seed, task)
    return gradients_config(study, model, seed)


def run_cell(study: StudySpec, kind: str, model: ModelSpec, seed: int, task: TaskSpec | None) -> dict:
    if kind == "pretrain":
        return run_pretrain_cell(study, model, seed)
    if kind == "finetune":
        return run_finetune_cell(study, model, seed, task)
    return run_gradients_cell(study, model, seed)


def is_complete(study: StudySpec, kind: str, model: ModelSpec, seed: int, task: TaskSpec | None) -> bool:
    """A record exists, and it was written for the configuration the study file now gives this cell; a record
    of another configuration is an error (delete it to rerun the cell), never silently reused."""
    path = cell_record(study, kind, model, seed, task)
    record = read_record(path)
    if record is None:
        return False
    config = json.loads(json.dumps(cell_config(study, kind, model, seed, task)))  # as the record stores it
    if record["config"] != config:
        changed = sorted(k for k in {*config, *record["config"]} if config.get(k) != record["config"].get(k))
        raise ValueError(
            f"{path} was completed with another configuration (fields {changed} differ from the study file): "
            "delete that record to rerun the cell, or restore the study file"
        )
    return True


def run_study(study: StudySpec, only_models: list[str] | None = None, max_cells: int | None = None) -> int:
    """Run the cells that are not complete yet (at most `max_cells`); return how many ran."""
    ran = 0
    for kind, model, seed, task in cells(study, only_models):
        if is_complete(study, kind, model, seed, task):
            continue
        if max_cells is not None and ran >= max_cells:
            break
        logger.info("cell: %s %s seed %d %s", kind, model.name, seed, task.name if task else "")
        summary = run_cell(study, kind, model, seed, task)
        write_record(cell_record(study, kind, model, seed, task), summary)
        ran += 1
    return ran
