"""End-to-end analyses over checkpoints: what recipes/analyze_gradients.py and recipes/analyze_masks.py call.

Both read one language's sentences as a "text" Dataset (meta_xlm.data.load_corpora) and batch them with the
checkpoint's own tokenizer, as pretraining did.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer

from meta_xlm.analysis.batches import check_languages, language_dataloader
from meta_xlm.analysis.gradient_conflict import (
    GradientConflictLog,
    conflict_rows,
    cosine_matrices,
    endless,
    language_gradients,
    matrix_rows,
    pair_cosines,
    shared_gradient_index,
)
from meta_xlm.analysis.hard_concrete import deterministic_gates
from meta_xlm.analysis.masks import (
    GateMap,
    MaskGroupSpec,
    extreme_groups,
    learn_language_mask,
    pi_similarity,
    resolve_gate_map,
    save_pi,
)
from meta_xlm.analysis.plots import (
    plot_conflict_matrix,
    plot_extreme_groups,
    plot_gradient_conflict,
    plot_mask_similarity,
)
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM
from meta_xlm.table_output import write_csv

logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")


def load_checkpoint(path: str | Path, languages: Sequence[str]):
    """(model, tokenizer) of a MetaXLM masked-LM checkpoint folder, checking it knows every language."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model checkpoint: it has no config.json")
    model = MetaXLMForMaskedLM.from_pretrained(path)
    check_languages(model.config, languages, str(path))
    return model, AutoTokenizer.from_pretrained(path)


def training_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of a pretraining run's checkpoint-N folders, by step; the run folder itself (a saved final
    model) when it has none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run_dir {run_dir} does not exist (expected a pretraining output_dir or a saved model)"
        )
    found = sorted(
        (int(match.group(1)), child)
        for child in run_dir.iterdir()
        if child.is_dir() and (match := CHECKPOINT_PATTERN.fullmatch(child.name))
    )
    if found:
        return found
    if (run_dir / "config.json").is_file():
        return [(0, run_dir)]
    raise FileNotFoundError(f"{run_dir} has neither checkpoint-N folders nor a saved model (config.json)")


# ---------------------------------------------------------------------------------------------- gradients
@dataclass
class GradientSettings:
    target_sentences: int = 4096
    batch_size: int = 32
    block_size: int = 256
    reference_language: str | None = None
    seed: int = 0
    matrix: bool = False  # also the languages × languages matrix (gradient_matrix.{csv,png})


def gradient_conflict_over_checkpoints(
    checkpoints: Sequence[tuple[int, Path]],
    corpora: Mapping[str, Dataset],
    settings: GradientSettings,
    output_dir: str | Path,
) -> list[dict]:
    """Fig. 3 from saved checkpoints: gradient conflict of every checkpoint on the same seeded batches.
    Writes gradient_conflict.{csv,jsonl}, TensorBoard scalars and gradient_conflict.png to `output_dir`; with
    `settings.matrix` also gradient_matrix.{csv,png} (write_conflict_matrix)."""
    languages = list(corpora)
    log = GradientConflictLog(output_dir)
    rows: list[dict] = []
    matrix: list[dict] = []
    for step, folder in checkpoints:
        model, tokenizer = load_checkpoint(folder, languages)
        batches = {
            language: endless(
                language_dataloader(
                    corpora[language],
                    tokenizer,
                    model.language_id(language),
                    settings.block_size,
                    settings.batch_size,
                    settings.seed,
                )
            )
            for language in languages
        }
        gradient_index = shared_gradient_index(model)
        gradients = language_gradients(
            model, batches, settings.target_sentences, settings.reference_language, settings.seed, gradient_index
        )
        results = pair_cosines(gradients, gradient_index)
        if settings.matrix:
            matrix.extend(matrix_rows(step, list(gradients), cosine_matrices(gradients, gradient_index)))
        logger.info("step %d: %s", step, {pair: round(values["all"], 4) for pair, values in results.items()})
        log.write(step, results)
        rows.extend(conflict_rows(step, results))
    log.close()
    plot_gradient_conflict(rows, Path(output_dir) / "gradient_conflict.png")
    if matrix:
        write_conflict_matrix(matrix, languages, settings.reference_language or languages[0], Path(output_dir))
    return rows


def write_conflict_matrix(rows: Sequence[Mapping], languages: Sequence[str], reference: str, output_dir: Path) -> None:
    """gradient_matrix.csv (every checkpoint, segment and ordered pair, the reference's replicate included) and
    gradient_matrix.png: the mean over checkpoints, whole model and each layer."""
    write_csv(output_dir / "gradient_matrix.csv", rows)
    layers = sorted({row["segment"] for row in rows if row["segment"].count(".") == 1 and row["segment"].startswith("layer.")},
                    key=lambda segment: int(segment.split(".")[1]))  # fmt: skip
    plot_conflict_matrix(rows, languages, reference, output_dir / "gradient_matrix.png", ["all", *layers])


# ---------------------------------------------------------------------------------------------- masks
@dataclass
class MaskSettings:
    steps: int = 500
    l0_lambda: float = 0.5
    learning_rate: float = 0.1
    batch_size: int = 16
    block_size: int = 256
    extreme_count: int = 10
    seed: int = 0


def replicate_name(language: str) -> str:
    return f"{language}#2"


def mask_analysis(
    model: MetaXLMForMaskedLM,
    tokenizer,
    corpora: Mapping[str, Dataset],
    reference_language: str,
    settings: MaskSettings,
    output_dir: str | Path,
    groups: Sequence[MaskGroupSpec],
    source: str,
) -> dict:
    """Learn π per language on the frozen model, plus a second run of the reference language on a disjoint half
    of its sentences with another seed (the En-En check). Writes pi_<run>.safetensors, mask_similarity.{csv,png}
    (Fig. 4a), mask_extremes_<lang>.{csv,png} (Fig. 4b) and mask_summary.json; returns the summary."""
    languages = list(corpora)
    check_languages(model.config, languages, source)
    if reference_language not in corpora:
        raise ValueError(
            f"reference_language={reference_language!r} is not among the analysed languages {languages}"
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    gate_map = resolve_gate_map(model, groups)
    sublayers = ", ".join(gate_map.sublayers())
    logger.info("%d gates (%s) over %d weights", gate_map.num_gates, sublayers, len(gate_map.weights))
    runs = mask_runs(corpora, reference_language)
    pis = learn_run_masks(model, tokenizer, runs, gate_map, settings, output_dir, source)
    similarity = compare_masks(
        pis, gate_map, languages, reference_language, settings.extreme_count, output_dir
    )
    summary = {
        "source": source,
        "num_gates": gate_map.num_gates,
        "similarity_all_layers": {
            f"{row['pair']} {row['sublayer']}": row["cosine"] for row in similarity if row["layer"] == "all"
        },
        "pi_mean": {run: float(pi.mean()) for run, pi in pis.items()},
        "fraction_open": {
            run: float((deterministic_gates(pi) > 0).double().mean()) for run, pi in pis.items()
        },
    }
    (output_dir / "mask_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def mask_runs(corpora: Mapping[str, Dataset], reference_language: str) -> dict[str, Dataset]:
    """Run name -> sentences: every language, the reference language split into two disjoint halves (the
    second half is the replicate run `replicate_name(reference_language)`)."""
    reference_halves = [corpora[reference_language].shard(2, index, contiguous=True) for index in (0, 1)]
    runs = dict(corpora)
    runs[reference_language] = reference_halves[0]
    runs[replicate_name(reference_language)] = reference_halves[1]
    return runs


def learn_run_masks(
    model: MetaXLMForMaskedLM,
    tokenizer,
    runs: Mapping[str, Dataset],
    gate_map: GateMap,
    settings: MaskSettings,
    output_dir: Path,
    source: str,
) -> dict[str, torch.Tensor]:
    """π of every run (seed: settings.seed + the run's position), each saved as pi_<run>.safetensors."""
    pis = {}
    for index, (run, sentences) in enumerate(runs.items()):
        language = run.split("#")[0]
        seed = settings.seed + index
        loader = language_dataloader(
            sentences, tokenizer, model.language_id(language), settings.block_size, settings.batch_size, seed
        )
        pis[run] = learn_language_mask(
            model,
            gate_map,
            endless(loader),
            settings.steps,
            settings.l0_lambda,
            settings.learning_rate,
            seed,
            progress=f"π {run}",
        )
        save_pi(
            output_dir / f"pi_{run.replace('#', '_')}.safetensors",
            pis[run],
            gate_map,
            {"language": language, "run": run, "source": source, "seed": seed},
        )
    return pis


def compare_masks(
    pis: Mapping[str, torch.Tensor],
    gate_map: GateMap,
    languages: Sequence[str],
    reference_language: str,
    extreme_count: int,
    output_dir: Path,
) -> list[dict]:
    """π similarity of the reference language with its replicate and every other language (Fig. 4a), and each
    other language's most different gate groups (Fig. 4b), as CSV and PNG; returns the similarity rows."""
    pairs = [(reference_language, replicate_name(reference_language))]
    pairs += [(reference_language, language) for language in languages if language != reference_language]
    similarity = pi_similarity(pis, gate_map, pairs)
    write_csv(output_dir / "mask_similarity.csv", similarity)
    plot_mask_similarity(similarity, output_dir / "mask_similarity.png")
    for language in languages:
        if language == reference_language:
            continue
        extremes = extreme_groups(pis[language], pis[reference_language], gate_map, extreme_count)
        write_csv(output_dir / f"mask_extremes_{language}.csv", extremes)
        plot_extreme_groups(
            extremes, language, reference_language, output_dir / f"mask_extremes_{language}.png"
        )
    return similarity


__all__ = [
    "GradientSettings",
    "MaskSettings",
    "gradient_conflict_over_checkpoints",
    "load_checkpoint",
    "mask_analysis",
    "replicate_name",
    "training_checkpoints",
]
