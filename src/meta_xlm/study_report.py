"""results.csv, report.md and the figures of a study, built from its complete cells only (meta_xlm.study).

- results.csv: one row per (model, seed, task, setting, language, metric) with its value, and on every row the
  pretraining run's steps, tokens seen per language and wall time. Pretraining rows have task "pretrain",
  metric "perplexity" (final validation perplexity) or "early_loss", and with setting "training" the run's mean
  diagnostics (surgery cosines per language pair, the meta higher-order ratio); gradient rows task "gradients",
  metric "cosine" per pair.
- report.md: per task and setting the paper's table layout (rows = models) with mean ± sd over seeds and the
  paper's number beside it; the figures; a verdict per claim with its effect size and spread (only the claims
  whose rows the study has: the paper's, and for a treatments study whether any treatment beats the best
  sampling temperature).
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from meta_xlm.analysis.plots import plot_conflict_matrix, plot_conflict_scatter, plot_curves
from meta_xlm.analysis.report import curve_rows, loss_curve, perplexity_curve
from meta_xlm.data import bits_per_character
from meta_xlm.study import DIAGNOSTIC_KEYS, ModelSpec, StudySpec, read_record, record_path
from meta_xlm.table_output import columns_and_cells, markdown_table, write_csv
from meta_xlm.tasks.metrics import MAIN_METRIC
from meta_xlm.tasks.reference import REFERENCE

RESULT_FIELDS = [
    "model", "paper_row", "seed", "task", "setting", "language", "metric", "value",
    "pretrain_steps", "tokens_seen", "pretrain_wall_time_s", "converged",
]  # fmt: skip
CONVERGED = {True: "yes", False: "no", None: ""}  # a fine-tuning cell's flag ("": recorded before it existed)


def result_rows(study: StudySpec) -> list[dict]:
    """Every measured value of the study's complete cells (see the module docstring)."""
    rows = []
    for model, seed, pretrain in pretrain_records(study):
        common = run_fields(model, seed, pretrain)
        for language, value in pretrain["perplexity"].items():
            rows.append({**common, "task": "pretrain", "setting": "", "language": language,
                         "metric": "perplexity", "value": value})  # fmt: skip
        for language, ratio in pretrain.get("characters_per_token", {}).items():  # comparable across tokenizers
            rows.append({**common, "task": "pretrain", "setting": "", "language": language,
                         "metric": "bits_per_character",
                         "value": bits_per_character(pretrain["perplexity"][language], ratio)})  # fmt: skip
        for task in filter(model.fine_tunes, study.tasks):
            cell = read_record(record_path(study, "finetune", model.run_name, seed, task)) or {}
            converged = CONVERGED[cell.get("converged")]
            for language, scores in cell.get("scores", {}).items():
                rows.extend({**common, "task": task.task, "setting": task.setting, "language": language,
                             "metric": metric, "value": value, "converged": converged}
                            for metric, value in scores.items())  # fmt: skip
        gradients = read_record(record_path(study, "gradients", model.run_name, seed))
        for row in (gradients or {}).get("rows", []):
            if row["segment"] == "all":
                rows.append({**common, "task": "gradients", "setting": f"step {row['step']}",
                             "language": row["pair"], "metric": "cosine", "value": row["cosine"]})  # fmt: skip
    return rows


def run_fields(model: ModelSpec, seed: int, pretrain: Mapping) -> dict:
    """The fields every row of one pretraining run carries: which run, its steps, tokens and wall time."""
    return {
        "model": model.name,
        "paper_row": model.paper_row or "",
        "seed": seed,
        "pretrain_steps": pretrain["steps"],
        "tokens_seen": " ".join(f"{k}={v}" for k, v in sorted(pretrain["tokens_seen"].items())),
        "pretrain_wall_time_s": pretrain["wall_time_s"],
    }


def pretrain_records(study: StudySpec):
    """(model, seed, record) of every recorded pretraining run, in study order."""
    for model in study.models:
        for seed in model.seeds:
            record = read_record(record_path(study, "pretrain", model.run_name, seed))
            if record:
                yield model, seed, record


def write_results_csv(rows: Sequence[Mapping], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_results_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [{**row, "seed": int(row["seed"]), "value": float(row["value"])} for row in csv.DictReader(handle)]


# ---------------------------------------------------------------------------------------------------------
# Statistics over seeds
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Summary:
    mean: float
    sd: float  # sample standard deviation over seeds (0 with one seed)
    n: int

    def text(self) -> str:
        # scores and perplexities read to one decimal; losses and bits per character (1-10) two; cosines and
        # ratios (|mean| < 1) three
        digits = 1 if abs(self.mean) >= 10 else 2 if abs(self.mean) >= 1 else 3
        mean = f"{self.mean:.{digits}f}"
        return f"{mean} ± {self.sd:.{digits}f} (n={self.n})" if self.n > 1 else f"{mean} (n=1)"


def summarize(values: Sequence[float]) -> Summary | None:
    if not values:
        return None
    return Summary(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


def values_of(rows: Sequence[Mapping], model: str, task: str, setting: str, language: str, metric: str):
    """One value per seed (gradient rows: the mean over the run's checkpoints)."""
    per_seed = defaultdict(list)
    for row in rows:
        if (row["model"], row["task"], row["language"], row["metric"]) == (model, task, language, metric) and (
            task == "gradients" or row["setting"] == setting
        ):
            per_seed[row["seed"]].append(float(row["value"]))
    return [statistics.fmean(values) for _, values in sorted(per_seed.items())]


# ---------------------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Claim:
    """`better` beats `worse` on (task, setting, metric) in `language` (`worse_language` for the other side,
    default the same); lower_is_better for perplexity and loss."""

    text: str
    better: str
    worse: str
    task: str
    setting: str
    language: str
    metric: str
    lower_is_better: bool = False
    worse_language: str | None = None


def verdict(claim: Claim, rows: Sequence[Mapping]) -> dict:
    """Effect = mean(better) − mean(worse) (sign flipped when lower is better), spread = its standard error
    sqrt(sd_b²/n_b + sd_w²/n_w). Reproduced: effect > 2 × spread; not reproduced: effect < −2 × spread (the
    opposite holds), or |effect| within 2 × spread with ≥ 3 seeds a side; otherwise inconclusive (one seed a
    side has no spread). A side without a complete cell: not yet run."""
    worse_language = claim.worse_language or claim.language
    better = summarize(values_of(rows, claim.better, claim.task, claim.setting, claim.language, claim.metric))
    worse = summarize(values_of(rows, claim.worse, claim.task, claim.setting, worse_language, claim.metric))
    sides = f"{claim.better} {claim.language} vs {claim.worse} {worse_language}"
    result = {"claim": claim.text, "comparison": sides, "measure": " ".join(filter(None, (claim.task, claim.setting, claim.metric)))}
    if better is None or worse is None:
        return {**result, "better": "", "worse": "", "effect": "", "spread": "", "verdict": "not yet run"}
    sign = -1.0 if claim.lower_is_better else 1.0
    effect = sign * (better.mean - worse.mean)
    spread = math.sqrt(better.sd**2 / better.n + worse.sd**2 / worse.n)
    if better.n < 2 or worse.n < 2:
        outcome = "inconclusive (one seed: no spread)"
    elif effect > 2 * spread:
        outcome = "reproduced"
    elif effect < -2 * spread:
        outcome = "not reproduced (the opposite holds)"
    elif better.n >= 3 and worse.n >= 3:
        outcome = "not reproduced (no difference beyond 2 spreads)"
    else:
        outcome = "inconclusive"
    return {**result, "better": better.text(), "worse": worse.text(), "effect": f"{effect:+.3g}",
            "spread": f"{spread:.2g}", "verdict": outcome}  # fmt: skip


PRETRAINING_HELPS = "pretraining helps at all"  # the claim gate_on_pretraining reads
FINE_TUNING_TASKS = ("pos", "ner", "qa")  # the tasks with claims (all scored by F1); XNLI is at chance at CPU scale


def paper_claims(language: str, reference: str = "en") -> list[Claim]:
    """The paper's findings (Sections 3-4) as comparisons of study rows (the model names of small_en_sw.yaml)."""
    claims = []
    for task in FINE_TUNING_TASKS:
        claims += [
            Claim(PRETRAINING_HELPS, "joint_pair", "random_init", task, "within", language, "f1"),
            Claim(PRETRAINING_HELPS, "joint_pair", "random_init", task, "zero_shot", language, "f1"),
            Claim("Mono > JointPair within-language", f"mono_{language}", "joint_pair", task, "within", language, "f1"),
            Claim("+ffn recovers within-language", "ffn", "joint_pair", task, "within", language, "f1"),
            Claim("+ffn collapses zero-shot", "joint_pair", "ffn", task, "zero_shot", language, "f1"),
            Claim("+meta adpt ≥ JointPair within", "meta_adpt", "joint_pair", task, "within", language, "f1"),
            Claim("+meta adpt ≥ JointPair zero-shot", "meta_adpt", "joint_pair", task, "zero_shot", language, "f1"),
            Claim("+meta adpt ≥ +adpt within", "meta_adpt", "adpt", task, "within", language, "f1"),
            Claim("+meta adpt ≥ +adpt zero-shot", "meta_adpt", "adpt", task, "zero_shot", language, "f1"),
            Claim("higher-order term matters (within)", "meta_adpt", "meta_adpt_first_order", task, "within", language, "f1"),
            Claim("higher-order term matters (zero-shot)", "meta_adpt", "meta_adpt_first_order", task, "zero_shot", language, "f1"),
        ]  # fmt: skip
    same, pair = f"{reference}-{reference}", f"{reference}-{language}"
    claims += [
        Claim("Mono has lower perplexity than JointPair", f"mono_{language}", "joint_pair", "pretrain", "", language,
              "perplexity", lower_is_better=True),
        # the same per character: each row learns its own tokenizer, so per-token perplexities do not compare
        Claim("Mono has lower perplexity than JointPair", f"mono_{language}", "joint_pair", "pretrain", "", language,
              "bits_per_character", lower_is_better=True),
        Claim("En-En gradient cosine > en-sw", "joint_pair", "joint_pair", "gradients", "", same, "cosine",
              worse_language=pair),
        Claim("+meta adpt early loss below +adpt", "meta_adpt", "adpt", "pretrain", "", "all", "early_loss",
              lower_is_better=True),
    ]  # fmt: skip
    return claims


def meta_step_claims(language: str) -> list[Claim]:
    """The open meta issues' questions as comparisons of small_en_sw_converged.yaml's meta rows: does θ's own
    optimizer as the lookahead beat Eq. 3's SGD step, is +meta adpt more than adapters trained on their language's
    meta-validation text alone (no lookahead, no higher-order term), and does the θ step lose anything by reusing
    the lookahead's gradient (taken at φ^t) instead of recomputing it (Eq. 5, at φ^{t+1})?"""
    comparisons = [
        ("optimizer lookahead beats SGD lookahead", "meta_adpt_lookahead_optimizer", "meta_adpt"),
        ("+meta adpt beats adapters on their own meta text", "meta_adpt", "adapters_on_own_meta_text"),
        ("recomputed θ gradient beats the lookahead's", "meta_adpt", "meta_adpt_theta_lookahead"),
        ("recomputed θ gradient beats the lookahead's (optimizer lookahead)", "meta_adpt_lookahead_optimizer",
         "meta_adpt_lookahead_optimizer_theta_lookahead"),
    ]  # fmt: skip
    claims = []
    for text, better, worse in comparisons:
        claims += [Claim(f"{text} ({setting.replace('_', '-')})", better, worse, task, setting, language, "f1")
                   for task in FINE_TUNING_TASKS for setting in ("within", "zero_shot")]  # fmt: skip
        claims.append(Claim(f"{text} (perplexity)", better, worse, "pretrain", "", language, "perplexity",
                            lower_is_better=True))  # fmt: skip
    return claims


def gate_on_pretraining(verdicts: list[dict]) -> list[dict]:
    """A downstream claim says nothing while pretrained models do not beat random init on that task and setting
    (zero-shot transfer can be absent where within-language fine-tuning gains): its verdict becomes inconclusive
    (with the reason) unless "pretraining helps at all" is reproduced for the same task and setting. The reason
    tells "shown absent" (the gate claim is not reproduced) from "not shown yet" (too few seeds, or not run)."""
    gates = {tuple(v["measure"].split()[:2]): v["verdict"] for v in verdicts if v["claim"] == PRETRAINING_HELPS}
    gated = []
    for entry in verdicts:
        task_setting = tuple(entry["measure"].split()[:2])
        downstream = task_setting[0] in FINE_TUNING_TASKS and entry["claim"] != PRETRAINING_HELPS
        gate = gates.get(task_setting, "not yet run")
        if downstream and gate != "reproduced" and entry["verdict"] != "not yet run":
            reason = ("pretraining does not beat random init" if gate.startswith("not reproduced")
                      else "pretraining's gain over random init not shown yet")  # fmt: skip
            entry = {**entry, "verdict": f"inconclusive: {reason} on {' '.join(task_setting)} "
                                         f"(would be: {entry['verdict']})"}  # fmt: skip
        gated.append(entry)
    return gated


def claims_in_study(claims: Sequence[Claim], study: StudySpec) -> list[Claim]:
    """The claims whose two rows are both grid rows of the study and whose measure the study takes (fine-tuning
    tasks and settings, Fig. 3's gradients, perplexity): another study's claims would only clutter."""
    names = {model.name for model in study.models}
    measured = {("pretrain", ""), *((task.task, task.setting) for task in study.tasks)}
    measured |= {("gradients", "")} if study.gradients else set()
    return [claim for claim in claims
            if claim.better in names and claim.worse in names and (claim.task, claim.setting) in measured]  # fmt: skip


# Beyond the paper (small_en_sw_treatments.yaml): rows are grouped by the name prefixes of that study file.
TEMPERATURE_ROWS = ("temperature_",)  # JointPair at sampling temperature T: the tuned-sampling baseline
SURGERY_ON_ADAPTERS_ROWS = ("adpt_pcgrad_", "adpt_gradvac_")
SURGERY_ON_JOINT_PAIR_ROWS = ("pcgrad_", "gradvac_")
# Language-balanced steps (one micro-batch per language) summed with weight 1 each: what a surgery row computes
# before its surgery, so the control that isolates the surgery itself from the balanced steps it runs on.
PLAIN_SUM_ROW = "balanced_sum"
TREATMENT_ROWS = (*SURGERY_ON_JOINT_PAIR_ROWS, *SURGERY_ON_ADAPTERS_ROWS, "loss_weights_", PLAIN_SUM_ROW)
TREATMENT_ANSWERS = {
    "reproduced": "yes",
    "not reproduced (the opposite holds)": "no: the baseline is better",
    "not reproduced (no difference beyond 2 spreads)": "no: no difference beyond 2 spreads",
}


def best_row(models: Sequence[str], rows: Sequence[Mapping], claim: Claim) -> str | None:
    """The model of `models` with the best mean over seeds on the claim's measure (None: none has a cell).
    Picking the best of several rows favours that side a little (the maximum of noisy means); both sides of a
    treatment claim are picked so, and a win must still exceed 2 standard errors."""
    means = {}
    for model in models:
        values = values_of(rows, model, claim.task, claim.setting, claim.language, claim.metric)
        if values:
            means[model] = statistics.fmean(values)
    if not means:
        return None
    return (min if claim.lower_is_better else max)(means, key=means.get)


def best_of_verdict(claim: Claim, candidates: Sequence[str], baselines: Sequence[str], rows: Sequence[Mapping]) -> dict:
    """verdict() of the best candidate row vs the best baseline row; the claim's own sides name the groups."""
    better = best_row(candidates, rows, claim) or claim.better
    worse = best_row(baselines, rows, claim) or claim.worse
    return verdict(Claim(claim.text, better, worse, claim.task, claim.setting, claim.language, claim.metric,
                         claim.lower_is_better), rows)  # fmt: skip


def treatment_verdicts(study: StudySpec, rows: Sequence[Mapping], language: str) -> list[dict]:
    """Does any treatment (gradient surgery on JointPair or +adpt, fixed loss weights) beat the best sampling
    temperature, per task and setting; does surgery beat the plain sum of the same language-balanced steps
    (PLAIN_SUM_ROW), and surgery on +adpt beat +adpt? Only groups the study has rows of;
    "pretraining helps at all" (best temperature vs random init) is there to gate the downstream ones
    (gate_on_pretraining); treatment_answers then words the verdicts as answers."""
    names = [model.name for model in study.models]
    groups = {
        "treatment": [name for name in names if name.startswith(TREATMENT_ROWS)],
        "temperature": [name for name in names if name.startswith(TEMPERATURE_ROWS)],
        "surgery on +adpt": [name for name in names if name.startswith(SURGERY_ON_ADAPTERS_ROWS)],
        "surgery on JointPair": [name for name in names if name.startswith(SURGERY_ON_JOINT_PAIR_ROWS)],
        "random init": [name for name in names if name == "random_init"],
        "+adpt": [name for name in names if name == "adpt"],
        "plain sum": [name for name in names if name == PLAIN_SUM_ROW],
    }
    comparisons = [
        (PRETRAINING_HELPS, "temperature", "random init"),
        ("a treatment beats the best temperature", "treatment", "temperature"),
        ("surgery beats the plain sum of the same balanced steps", "surgery on JointPair", "plain sum"),
        ("surgery on +adpt beats +adpt", "surgery on +adpt", "+adpt"),
    ]
    measures = [(task.task, task.setting, "f1", False) for task in study.tasks if task.task in FINE_TUNING_TASKS]
    measures.append(("pretrain", "", "perplexity", True))
    verdicts = []
    for text, candidates, baselines in comparisons:
        if not groups[candidates] or not groups[baselines]:
            continue
        for task, setting, metric, lower in measures:
            if task == "pretrain" and text == PRETRAINING_HELPS:
                continue  # it gates the fine-tuning claims only
            claim = Claim(text, f"best {candidates} row", f"best {baselines} row", task, setting, language, metric,
                          lower_is_better=lower)  # fmt: skip
            verdicts.append(best_of_verdict(claim, groups[candidates], groups[baselines], rows))
    return verdicts


def treatment_answers(verdicts: Sequence[Mapping]) -> list[dict]:
    """"yes" / "no: ..." for the treatment questions (the pretraining gate keeps verdict()'s wording)."""
    return [{**entry, "verdict": TREATMENT_ANSWERS.get(entry["verdict"], entry["verdict"])}
            if entry["claim"] != PRETRAINING_HELPS else dict(entry) for entry in verdicts]  # fmt: skip


def dict_table(rows: Sequence[Mapping]) -> str:
    return markdown_table(*columns_and_cells(rows)) if rows else ""


# ---------------------------------------------------------------------------------------------------------
# Tables, figures, report
# ---------------------------------------------------------------------------------------------------------


def task_table(study: StudySpec, rows: Sequence[Mapping], task: str, setting: str, metric: str) -> list[dict]:
    """The paper's layout: one row per model, one column per evaluation language (mean ± sd over seeds), and the
    paper's number for the model's row (the language's own when the paper has it, else its average)."""
    languages = sorted({r["language"] for r in rows if (r["task"], r["setting"], r["metric"]) == (task, setting, metric)})
    table = []
    for model in study.models:
        line = {"model": model.name}
        unconverged = unconverged_seeds(rows, model.name, task, setting)
        mark = f" ({len(unconverged)} not converged)" if unconverged else ""
        for language in languages:
            summary = summarize(values_of(rows, model.name, task, setting, language, metric))
            line[language] = summary.text() + mark if summary else "–"
        reported = MAIN_METRIC.get(task) == metric  # the paper prints one metric per task
        reference = REFERENCE.get(task, {}).get(setting, {}).get(model.paper_row or "", {}) if reported else {}
        key = next((language for language in languages if language in reference), "avg")
        line["paper"] = f"{reference[key]} ({key})" if key in reference else "–"
        table.append(line)
    return table


def unconverged_seeds(rows: Sequence[Mapping], model: str, task: str, setting: str) -> list[int]:
    """Seeds whose fine-tuning cell did not converge (meta_xlm.tasks.finetuning.convergence): the table marks
    them rather than scoring them silently."""
    return sorted({r["seed"] for r in rows if (r["model"], r["task"], r["setting"]) == (model, task, setting)
                   and r.get("converged") == "no"})  # fmt: skip


def gain_text(gain: float | None) -> str:
    return "– (fewer than 3 epochs)" if gain is None else f"{gain:+.2f}"


def convergence_section(study: StudySpec) -> str:
    """How many fine-tuning cells converged, and the ones that did not: selected point, best epoch and the dev
    score's gain over the last two epochs."""
    flagged, unconverged = 0, []
    for model in study.models:
        for seed in model.seeds:
            for task in filter(model.fine_tunes, study.tasks):
                cell = read_record(record_path(study, "finetune", model.run_name, seed, task)) or {}
                if cell.get("converged") is None:
                    continue
                flagged += 1
                if not cell["converged"]:
                    selection = cell["selection"]
                    unconverged.append({
                        "model": model.name, "seed": seed, "task": task.name,
                        "selected": f"batch {selection['batch_size']}, lr {selection['learning_rate']:g}",
                        "best epoch": f"{selection['best_epoch']} of {selection['epochs']}",
                        "gain over the last two epochs": gain_text(selection["gain_last_two_epochs"]),
                    })  # fmt: skip
    if not flagged:
        return ""
    head = (f"## Convergence of fine-tuning\n\n{flagged - len(unconverged)} of {flagged} fine-tuning cells converged "
            "(the selected grid point's best dev epoch is not its last, or its dev score gained < 0.5 over the last "
            "two epochs); tables mark the others.")  # fmt: skip
    return head + (f"\n\n{dict_table(unconverged)}" if unconverged else "")


def early_loss(history: Sequence[Mapping], max_step: int) -> float | None:
    points = loss_curve(history, max_step)
    return statistics.fmean(value for _, value in points) if points else None


def mean_curve(curves: Sequence[tuple[int, Sequence[tuple[int, float]]]]) -> list[tuple[int, float]]:
    """Point-wise mean over seeds of (weight, curve) pairs, at the steps every curve has: a curve of weight n is
    already the mean of n seeds (see seed_curves)."""
    steps = set.intersection(*(set(step for step, _ in curve) for _, curve in curves)) if curves else set()
    total = sum(weight for weight, _ in curves)
    return [(step, sum(weight * dict(curve)[step] for weight, curve in curves) / total) for step in sorted(steps)]


SEED_MEAN_CURVES = "seed_mean_curves.csv"


def seed_curves(study: StudySpec, model: str, name: str, curve_of) -> list[tuple[int, list[tuple[int, float]]]]:
    """(weight, curve) of each recorded pretraining seed of `model`: `curve_of(history)` with weight 1. Seeds
    recorded without their curves (runs that predate curves in records) count through <records_dir>/
    seed_mean_curves.csv, which holds the mean curve of those seeds (columns curve, run, seeds, step, value)."""
    spec = study.model(model)
    records = {seed: read_record(record_path(study, "pretrain", spec.run_name, seed)) for seed in spec.seeds}
    curves = [(1, curve_of(r["history"])) for r in records.values() if r and r.get("history") is not None]
    without = {seed for seed, r in records.items() if r and r.get("history") is None}
    rows = read_seed_mean_curves(Path(study.records_dir))
    groups = defaultdict(list)
    for row in rows:
        if (row["curve"], row["run"]) == (name, spec.run_name):
            groups[row["seeds"]].append((int(row["step"]), float(row["value"])))
    for seeds_text, points in groups.items():
        seeds = {int(seed) for seed in seeds_text.split()}
        if not seeds <= without:
            raise ValueError(
                f"{Path(study.records_dir) / SEED_MEAN_CURVES}: {name} of {spec.run_name} averages seeds {sorted(seeds)}, "
                f"but only seeds {sorted(without)} are recorded without their own curves"
            )
        without -= seeds
        curves.append((len(seeds), sorted(points)))
    return curves


def read_seed_mean_curves(records_dir: Path) -> list[dict]:
    path = records_dir / SEED_MEAN_CURVES
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def figure(curves: Mapping[str, list], results_dir: Path, stem: str, title: str, ylabel: str, log_y=False) -> str | None:
    """Write <stem>.csv and <stem>.png of the non-empty curves; return the Markdown image line (None: nothing)."""
    curves = {name: points for name, points in curves.items() if points}
    if not curves:
        return None
    write_csv(results_dir / f"{stem}.csv", curve_rows(curves, ylabel))
    plot_curves(curves, results_dir / f"{stem}.png", title, ylabel, log_y=log_y)
    return f"![{title}]({stem}.png) ([data]({stem}.csv))"


def bits_per_character_curve(study: StudySpec, model: str, language: str) -> list[tuple[int, float]]:
    """The mean over seeds of a row's validation perplexity curve in bits per character (each seed's run keeps
    one tokenizer, so one characters-per-token scale); empty without records that measured the scale."""
    spec = study.model(model)
    curves = []
    for seed in spec.seeds:
        record = read_record(record_path(study, "pretrain", spec.run_name, seed)) or {}
        ratio = record.get("characters_per_token", {}).get(language)
        if ratio and record.get("history") is not None:
            points = perplexity_curve(record["history"], language)
            curves.append((1, [(step, bits_per_character(value, ratio)) for step, value in points]))
    return mean_curve(curves)


def figure_lines(study: StudySpec, results_dir: Path) -> list[str]:
    """Fig. 2 (perplexity and bits per character of Mono, JointPair and All-7, per language), Fig. 3 (gradient
    cosine), Fig. 4c (early loss)."""
    lines = []
    names = [model.name for model in study.models]
    for language in study.figures.get("perplexity_languages", []):
        models = [model for model in (f"mono_{language}", "joint_pair", f"joint_pair_en_{language}", SEVEN_ROW)
                  if model in names]  # fmt: skip
        curves = {
            model: mean_curve(seed_curves(study, model, f"perplexity_{language}", lambda h: perplexity_curve(h, language)))
            for model in models
        }
        title = f"Fig. 2: validation perplexity ({language})"
        lines.append(figure(curves, results_dir, f"fig2_perplexity_{language}", title, "perplexity", log_y=True))
        curves = {model: bits_per_character_curve(study, model, language) for model in models}
        title = f"Fig. 2: validation bits per character ({language})"  # comparable across tokenizers
        lines.append(figure(curves, results_dir, f"fig2_bits_per_character_{language}", title, "bits per character"))
    curves = {}
    for model in study.gradients.get("models", []):
        spec = study.model(model)
        records = [read_record(record_path(study, "gradients", spec.run_name, seed)) for seed in spec.seeds]
        per_pair = defaultdict(list)
        for record in filter(None, records):
            for pair in {row["pair"] for row in record["rows"]}:
                per_pair[pair].append((1, [(r["step"], r["cosine"]) for r in record["rows"]
                                           if r["pair"] == pair and r["segment"] == "all"]))  # fmt: skip
        curves.update({f"{model} {pair}": mean_curve(seeds) for pair, seeds in sorted(per_pair.items())})
    lines.append(figure(curves, results_dir, "fig3_gradient_cosine", "Fig. 3: gradient cosine", "cosine"))
    max_step = study.figures.get("loss_max_step")
    curves = {
        model: mean_curve(seed_curves(study, model, "loss", lambda h: loss_curve(h, max_step)))
        for model in study.figures.get("loss_models", [])
    }
    lines.append(figure(curves, results_dir, "fig4c_early_loss", "Fig. 4c: early MLM training loss", "loss"))
    return [line for line in lines if line]


def early_loss_rows(study: StudySpec) -> list[dict]:
    """Mean training loss up to figures.loss_max_step of every recorded pretraining run (Fig. 4c's claim); a
    record without its curves carries the value itself (`early_loss`)."""
    max_step = study.figures.get("loss_max_step")
    rows = []
    for model, seed, record in pretrain_records(study) if max_step else ():
        history = record.get("history")
        value = early_loss(history, max_step) if history is not None else record.get("early_loss")
        if value is not None:
            rows.append({**run_fields(model, seed, record), "task": "pretrain", "setting": "", "language": "all",
                         "metric": "early_loss", "value": value})  # fmt: skip
    return rows


def diagnostic_rows(study: StudySpec) -> list[dict]:
    """Per pretraining run, the mean over its logging windows of each diagnostic it logged (DIAGNOSTIC_KEYS of
    meta_xlm.study): task "pretrain", setting "training", language the pair ("all" for the meta ratio)."""
    rows = []
    for model, seed, record in pretrain_records(study):
        windows = defaultdict(list)
        for entry in record.get("history") or ():
            for key, value in entry.items():
                if key.startswith(DIAGNOSTIC_KEYS) and math.isfinite(value):
                    windows[key].append(value)
        for key, values in sorted(windows.items()):
            metric, _, pair = key.partition("/")
            rows.append({**run_fields(model, seed, record), "task": "pretrain", "setting": "training",
                         "language": pair or "all", "metric": metric, "value": statistics.fmean(values)})  # fmt: skip
    return rows


def table_sections(study: StudySpec, rows: Sequence[Mapping]) -> list[str]:
    sections = []
    for task in study.tasks:
        for metric in sorted({r["metric"] for r in rows if (r["task"], r["setting"]) == (task.task, task.setting)}):
            title = f"### {task.task.upper()} {task.setting} (train {task.train_language}), {metric}"
            sections.append(f"{title}\n\n{dict_table(task_table(study, rows, task.task, task.setting, metric))}")
    pretraining = task_table(study, rows, "pretrain", "", "perplexity")
    sections.append(f"### Final validation perplexity\n\n{dict_table(pretraining)}")
    if any(row["metric"] == "bits_per_character" for row in rows):
        per_character = task_table(study, rows, "pretrain", "", "bits_per_character")
        sections.append("### Final validation bits per character (comparable across tokenizers)\n\n"
                        f"{dict_table(per_character)}")
    for metric in sorted({r["metric"] for r in rows if (r["task"], r["setting"]) == ("pretrain", "training")}):
        measured = {r["model"] for r in rows if (r["setting"], r["metric"]) == ("training", metric)}
        table = [line for line in task_table(study, rows, "pretrain", "training", metric) if line["model"] in measured]
        sections.append(f"### {metric} (mean over the run's logging windows)\n\n{dict_table(table)}")
    return sections


def compared_numbers(study: StudySpec, rows: Sequence[Mapping], before: Sequence[Mapping]) -> list[dict]:
    """Each row's main score per task (and its final perplexity) in the earlier study and in this one."""
    measures = [(t.task, t.setting, language, MAIN_METRIC[t.task]) for t in study.tasks for language in t.eval_languages]
    languages = sorted({r["language"] for r in rows if r["task"] == "pretrain" and r["metric"] == "perplexity"})
    measures += [("pretrain", "", language, "perplexity") for language in languages]
    table = []
    for task, setting, language, metric in measures:
        for model in study.models:
            old = summarize(values_of(before, model.name, task, setting, language, metric))
            new = summarize(values_of(rows, model.name, task, setting, language, metric))
            if old is None and new is None:
                continue
            table.append({
                "measure": " ".join(filter(None, (task, setting, language, metric))), "model": model.name,
                "before": old.text() if old else "–", "now": new.text() if new else "–",
                "change": f"{new.mean - old.mean:+.1f}" if old and new else "",
            })  # fmt: skip
    return table


NOT_RUN = "not yet run"


def changed_verdicts(verdicts: Sequence[Mapping], before: Sequence[Mapping]) -> list[dict]:
    """Each verdict of this study beside the earlier study's verdict on the same claim, comparison and measure;
    `changed` only where both studies have run it (a claim whose cells are still missing has not changed)."""
    earlier = {(v["claim"], v["comparison"], v["measure"]): v["verdict"] for v in before}
    table = []
    for v in verdicts:
        old = earlier.get((v["claim"], v["comparison"], v["measure"]), "–")
        comparable = old not in ("–", NOT_RUN) and v["verdict"] != NOT_RUN
        table.append({"claim": v["claim"], "comparison": v["comparison"], "measure": v["measure"], "before": old,
                      "now": v["verdict"], "changed": "yes" if comparable and old != v["verdict"] else ""})  # fmt: skip
    return table


def comparison_sections(study: StudySpec, rows: Sequence[Mapping], verdicts: Sequence[Mapping]) -> list[str]:
    """With `compare_with`: the earlier study's numbers and verdicts beside this one's (e.g. the same rows
    fine-tuned under another protocol), and which verdicts changed."""
    if not study.compare_with:
        return []
    earlier = Path(study.compare_with)
    with (earlier / "verdicts.csv").open(encoding="utf-8") as handle:
        verdicts_before = list(csv.DictReader(handle))
    changes = changed_verdicts(verdicts, verdicts_before)
    changed = sum(1 for change in changes if change["changed"])
    both = sum(1 for change in changes if change["before"] not in ("–", NOT_RUN) and change["now"] != NOT_RUN)
    return [
        f"## Verdicts before ({earlier}) and now\n\n{changed} of the {both} verdicts both studies give changed.\n\n"
        + dict_table(changes),
        f"## Numbers before ({earlier}) and now (mean ± sd over pretraining seeds)\n\n"
        + dict_table(compared_numbers(study, rows, read_results_csv(earlier / "results.csv"))),
    ]


def cell_counts(study: StudySpec) -> str:
    done = total = 0
    for model in study.models:
        for seed in model.seeds:
            paths = [record_path(study, "pretrain", model.run_name, seed)]
            paths += [record_path(study, "finetune", model.run_name, seed, task) for task in filter(model.fine_tunes, study.tasks)]
            if model.name in study.gradients.get("models", []):
                paths.append(record_path(study, "gradients", model.run_name, seed))
            total += len(paths)
            done += sum(path.is_file() for path in paths)
    return f"{done} of {total} cells complete"


TREATMENTS_INTRO = (
    "## Does any treatment beat the tuned-temperature baseline, and by how much?\n\n"
    "Per task and setting: the best row (highest mean over seeds; lowest for perplexity) of the treatments "
    "(PCGrad / GradVac on JointPair or +adpt, fixed loss weights incl. the plain sum) vs the best "
    "sampling-temperature row; then surgery on JointPair vs the plain sum of the same language-balanced steps "
    "(`balanced_sum`: what surgery changes, apart from the balanced steps), and surgery on +adpt vs +adpt. Effect = "
    "its margin, spread = its standard error; yes: effect > 2 spreads; no: the baseline is better, or no "
    "difference with ≥ 3 seeds a side; otherwise inconclusive.\n\n"
)


def build_study_report(study: StudySpec, language: str = "sw", notes: str = "") -> Path:
    """Write results.csv, the figures and report.md to study.results_dir; return report.md's path."""
    results_dir = Path(study.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    rows = result_rows(study) + early_loss_rows(study) + diagnostic_rows(study)
    write_results_csv(rows, results_dir / "results.csv")
    claims = claims_in_study(paper_claims(language) + meta_step_claims(language), study)
    if not any(row["metric"] == "bits_per_character" for row in rows):  # records from before it was measured
        claims = [claim for claim in claims if claim.metric != "bits_per_character"]
    verdicts = gate_on_pretraining([verdict(claim, rows) for claim in claims])
    treatments = treatment_answers(gate_on_pretraining(treatment_verdicts(study, rows, language)))
    if verdicts or treatments:
        write_csv(results_dir / "verdicts.csv", verdicts + treatments)
    sections = [
        f"# Study {study.name}: {cell_counts(study)}",
        notes,
        "## Verdicts\n\nEffect = mean(first) − mean(second) over seeds (sign flipped where lower is better); "
        "spread = its standard error. Reproduced: effect > 2 spreads.\n\n" + dict_table(verdicts) if verdicts else "",
        TREATMENTS_INTRO + dict_table(treatments) if treatments else "",
        *seven_language_sections(study, rows, results_dir),  # the seven-language study's verdicts (issue 29)
        *comparison_sections(study, rows, verdicts),
        convergence_section(study),
        "## Results (mean ± sd over pretraining seeds; `paper`: the paper's number for that row)",
        *table_sections(study, rows),
        "## Figures",
        *figure_lines(study, results_dir),
    ]
    report = results_dir / "report.md"
    report.write_text("\n\n".join(section for section in sections if section) + "\n", encoding="utf-8")
    return report


# ---------------------------------------------------------------------------------------------------------
# The seven-language study (recipes/configs/study/small_7lang.yaml, issue 29): rows are named all_7*, mono_<x>,
# joint_pair_en_<x>, random_init. Verdicts 1-4: the curse, conflict vs loss, recoveries, the meta objective's cost.
# ---------------------------------------------------------------------------------------------------------

SEVEN_ROW = "all_7"
RECOVERY_ROWS = ("all_7_adpt", "all_7_meta_adpt_k2")  # +adpt, +meta adpt (the sampled meta objective)
FLAT_TEMPERATURE_ROW = "all_7_temperature_5"
META_ALL_ROW = "all_7_meta_adpt_all"  # all seven languages in the meta objective
CURSE_LANGUAGES = ("te", "sw")


def within_measures(study: StudySpec, language: str) -> list[tuple[str, str, str, bool]]:
    """(task, setting, metric, lower_is_better) of the study's within-language tasks in `language`, then its
    validation perplexity."""
    measures = [(task.task, "within", "f1", False) for task in study.tasks
                if task.setting == "within" and task.train_language == language and task.task in FINE_TUNING_TASKS]  # fmt: skip
    return [*measures, ("pretrain", "", "perplexity", True), ("pretrain", "", "bits_per_character", True)]


def pretraining_tokens(study: StudySpec, model: str, language: str) -> str:
    """The mean over recorded seeds of the tokens of `language` the row pretrained on ("–": none recorded)."""
    seen = [record["tokens_seen"].get(language, 0) for spec, _, record in pretrain_records(study) if spec.name == model]
    return f"{statistics.fmean(seen) / 1e6:.2f}M" if seen else "–"


def seven_verdict(study: StudySpec, claim: Claim, rows: Sequence[Mapping]) -> dict:
    """verdict() with the claim's language and each side's pretraining tokens in that language."""
    tokens = f"{pretraining_tokens(study, claim.better, claim.language)} / {pretraining_tokens(study, claim.worse, claim.language)}"
    return {**verdict(claim, rows), "language": claim.language, "tokens (first / second)": tokens}


def seven_pretraining_gates(study: StudySpec, rows: Sequence[Mapping], language: str) -> list[dict]:
    """Per within-language task of `language`: the best pretrained row that fine-tunes on it vs random init."""
    gates = []
    for task in study.tasks:
        if task.setting != "within" or task.train_language != language or task.task not in FINE_TUNING_TASKS:
            continue
        pretrained = [m.name for m in study.models if m.name != "random_init" and m.fine_tunes(task)]
        claim = Claim(PRETRAINING_HELPS, "best pretrained row", "random_init", task.task, "within", language, "f1")
        gates.append({**best_of_verdict(claim, pretrained, ["random_init"], rows), "language": language,
                      "tokens (first / second)": ""})  # fmt: skip
    return gates


def curse_claims(names: set[str], language: str) -> list[tuple[str, str, str]]:
    """(text, better, worse) of Mono ≥ JointPair ≥ All-7 for one language, among the study's rows."""
    mono, pair = f"mono_{language}", f"joint_pair_en_{language}"
    chain = [("Mono ≥ JointPair", mono, pair), ("JointPair ≥ All-7", pair, SEVEN_ROW), ("Mono ≥ All-7", mono, SEVEN_ROW)]
    return [entry for entry in chain if entry[1] in names and entry[2] in names]


def recovery_claims(names: set[str], language: str) -> list[tuple[str, str, str]]:
    """(text, better, worse): each recovery row vs All-7 (does it recover the loss?) and vs T = 5."""
    claims = []
    for row in (row for row in RECOVERY_ROWS if row in names):
        claims.append((f"{row} recovers All-7's loss", row, SEVEN_ROW))
        if FLAT_TEMPERATURE_ROW in names:
            claims.append((f"{row} beats T = 5", row, FLAT_TEMPERATURE_ROW))
    return claims


def gate_per_language(verdicts: Sequence[Mapping]) -> list[dict]:
    """gate_on_pretraining within each language: the same task and setting (e.g. NER within) is a different
    fine-tuning set in te, sw and hi, so each language has its own gate."""
    languages = list(dict.fromkeys(entry["language"] for entry in verdicts))
    gated = {}
    for language in languages:
        group = [(index, entry) for index, entry in enumerate(verdicts) if entry["language"] == language]
        gated.update(zip((index for index, _ in group), gate_on_pretraining([entry for _, entry in group])))
    return [gated[index] for index in range(len(verdicts))]


def seven_language_verdicts(study: StudySpec, rows: Sequence[Mapping], claims_of) -> list[dict]:
    """Verdicts of `claims_of(names, language)` on every within measure of te and sw, with the pretraining gates."""
    names = {model.name for model in study.models}
    verdicts = []
    for language in CURSE_LANGUAGES:
        verdicts += seven_pretraining_gates(study, rows, language)
        for text, better, worse in claims_of(names, language):
            for task, setting, metric, lower in within_measures(study, language):
                claim = Claim(text, better, worse, task, setting, language, metric, lower_is_better=lower)
                verdicts.append(seven_verdict(study, claim, rows))
    return gate_per_language(verdicts)


ALPHA = 0.05  # claim 2's one-sided test level


def average_ranks(values: Sequence[float]) -> list[float]:
    """0-based ranks; tied values share the mean of their ranks."""
    ordered = sorted(values)
    return [statistics.fmean(rank for rank, other in enumerate(ordered) if other == value) for value in values]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson's correlation of the ranks; NaN when a side is constant (no ordering to compare)."""
    rx, ry = average_ranks(x), average_ranks(y)
    if len(set(rx)) < 2 or len(set(ry)) < 2:
        return float("nan")
    return statistics.correlation(rx, ry)


def permutation_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Exact one-sided p of a correlation at most as high as the observed ρ, over every ordering of y (n ≤ 8)."""
    observed = spearman(x, y)
    orderings = list(itertools.permutations(y))
    return sum(spearman(x, ordering) <= observed + 1e-12 for ordering in orderings) / len(orderings)


def fewest_testable_points() -> int:
    """The smallest n whose best possible ordering reaches p < ALPHA (one ordering in n!): 4 at 0.05."""
    return next(n for n in itertools.count(2) if 1 / math.factorial(n) < ALPHA)


def conflict_points(study: StudySpec, rows: Sequence[Mapping]) -> list[dict]:
    """Claim 2's data, one entry per within-language task in a language other than English: All-7's mean en-X
    gradient cosine (over checkpoints, then seeds) and its drop from Mono-X (else JointPair en-X) with the spread."""
    names = {model.name for model in study.models}
    points = []
    for task in study.tasks:
        language = task.train_language
        if task.setting != "within" or language == "en" or task.task not in FINE_TUNING_TASKS:
            continue
        reference = next((row for row in (f"mono_{language}", f"joint_pair_en_{language}") if row in names), None)
        cosine = summarize(values_of(rows, SEVEN_ROW, "gradients", "", f"en-{language}", "cosine"))
        drop = verdict(Claim("drop", reference, SEVEN_ROW, task.task, "within", language, "f1"), rows) if reference else {}
        points.append({"language": language, "task": task.task, "reference": reference or "none in the study",
                       "en-X cosine": cosine.mean if cosine else None, "cosine sd": cosine.sd if cosine else None,
                       "drop": float(drop["effect"]) if drop.get("effect") else None,
                       "drop spread": float(drop["spread"]) if drop.get("spread") else None})  # fmt: skip
    return points


def conflict_verdicts(points: Sequence[Mapping]) -> list[dict]:
    """Per task: does a lower en-X cosine go with a larger drop (Spearman ρ < 0, exact one-sided p < ALPHA)?"""
    verdicts = []
    for task in dict.fromkeys(point["task"] for point in points):
        usable = [p for p in points if p["task"] == task and p["en-X cosine"] is not None and p["drop"] is not None]
        x, y = [p["en-X cosine"] for p in usable], [p["drop"] for p in usable]
        entry = {"claim": "conflict predicts loss", "measure": f"{task} within f1", "points": len(usable),
                 "languages": " ".join(p["language"] for p in usable)}  # fmt: skip
        if len(usable) < fewest_testable_points():
            outcome = (f"cannot be tested: {len(usable)} language(s) with both measures; fewer than "
                       f"{fewest_testable_points()} points cannot reach p < {ALPHA} in any order")  # fmt: skip
            verdicts.append({**entry, "rho": "", "p": "", "verdict": outcome})
            continue
        rho, p = spearman(x, y), permutation_p(x, y)
        shown = rho < 0 and p < ALPHA
        outcome = "yes: lower cosine, larger drop" if shown else "not shown"
        verdicts.append({**entry, "rho": f"{rho:+.2f}", "p": f"{p:.3f}", "verdict": outcome})
    return verdicts


CONFLICT_INTRO = (
    "## 2. Does gradient conflict predict the loss?\n\n"
    "Per language X: All-7's mean en-X cosine of the shared gradients (whole model; mean over checkpoints, then "
    "seeds) against X's within-language drop (Mono-X, else JointPair en-X, minus All-7; F1 points, spread its "
    "standard error). Test: Spearman's ρ over languages, exact one-sided permutation p. **What so few points can "
    "and cannot show:** at most six en-X pairs exist (seven languages), and only languages with a Mono or "
    "JointPair row have a drop; {n} points are needed before any ordering can reach p < {alpha}. Even then a "
    "correlation over languages cannot tell conflict from what varies with it across languages (script, "
    "pretraining tokens, text domain, fine-tuning data), cannot show that conflict causes the loss, and one "
    "language (te: fewest tokens, its own script) can make or break it. It can show whether the ordering of "
    "languages by conflict matches their ordering by loss.\n\n"
)


META_ANSWERS = {  # all seven (first) vs k = 2 (second): is the sampled objective as good?
    "reproduced": "no: all seven is better",
    "not reproduced (the opposite holds)": "yes: k = 2 is better",
    "not reproduced (no difference beyond 2 spreads)": "yes: no difference beyond 2 spreads",
    "inconclusive": "yes: no difference beyond 2 spreads (fewer than 3 seeds a side)",
}


CLOCKS = {"cpu": ("cpu_time_s", "timed_steps"), "wall": ("wall_time_s", "steps")}


def seconds_per_step(study: StudySpec, model: str, clock: str = "wall") -> float | None:
    """Mean over recorded seeds of the pretraining cell's seconds per optimizer step (data preparation and the
    final evaluation included: the same for every All-7 row). "cpu": CPU seconds of the cell's last run of the
    recipe over the steps it took (pauses and waits for a core left out); "wall": wall seconds over all steps."""
    time_key, steps_key = CLOCKS[clock]
    values = [r[time_key] / r[steps_key] for spec, _, r in pretrain_records(study)
              if spec.name == model and r.get(steps_key) and time_key in r]  # fmt: skip
    return statistics.fmean(values) if values else None


def cost_clock(study: StudySpec, models: Sequence[str]) -> str:
    """"cpu" when every recorded pretraining cell of `models` has its CPU time (recorded since session 6: a
    study paused for CI or sharing the cores leaves it unchanged), else "wall"."""
    records = [r for spec, _, r in pretrain_records(study) if spec.name in models]
    return "cpu" if records and all("cpu_time_s" in r and r.get("timed_steps") for r in records) else "wall"


def meta_objective_claims(names: set[str], language: str) -> list[tuple[str, str, str]]:
    return [("sampled meta objective (k = 2) as good as all seven", META_ALL_ROW, RECOVERY_ROWS[1])]


def meta_objective_verdicts(study: StudySpec, rows: Sequence[Mapping]) -> tuple[list[dict], str]:
    """Claim 4: all seven languages in the meta objective vs the sampled k = 2, per within measure of te and sw,
    and the cost ratio (seconds per step, all seven / k = 2: CPU time where every cell recorded it, else wall)."""
    sampled = RECOVERY_ROWS[1]
    names = {model.name for model in study.models}
    if not {sampled, META_ALL_ROW} <= names:
        return [], ""
    verdicts = [{**entry, "verdict": META_ANSWERS.get(entry["verdict"], entry["verdict"])}
                if entry["claim"] != PRETRAINING_HELPS else entry
                for entry in seven_language_verdicts(study, rows, meta_objective_claims)]  # fmt: skip
    clock = cost_clock(study, [META_ALL_ROW, sampled])
    costs = seconds_per_step(study, META_ALL_ROW, clock), seconds_per_step(study, sampled, clock)
    measured = ("CPU time of the pretraining cells: compare at equal thread counts" if clock == "cpu"
                else "wall time of the pretraining cells on a shared machine")  # fmt: skip
    cost = (f"Cost: {costs[0]:.2f} s per step with all seven, {costs[1]:.2f} s with k = 2: ratio {costs[0] / costs[1]:.2f} "
            f"({measured})" if None not in costs else "Cost: not yet run")  # fmt: skip
    return verdicts, cost


def seven_matrix_rows(study: StudySpec) -> list[dict]:
    """All-7's gradient matrix from its gradient records (every checkpoint and seed): each pair in both orders,
    "en-en" as (en, en#2), and 1 on the diagonal (a gradient with itself, by definition)."""
    spec = study.model(SEVEN_ROW)
    matrix = []
    for seed in spec.seeds:
        for row in (read_record(record_path(study, "gradients", spec.run_name, seed)) or {}).get("rows", []):
            a, b = row["pair"].split("-")
            pairs = [(a, f"{b}#2")] if a == b else [(a, b), (b, a)]
            matrix += [{"segment": row["segment"], "language_a": x, "language_b": y, "cosine": row["cosine"]} for x, y in pairs]
    segments = {row["segment"] for row in matrix}
    languages = study.gradients.get("languages", [])
    return matrix + [{"segment": segment, "language_a": language, "language_b": language, "cosine": 1.0}
                     for segment in sorted(segments) for language in languages]  # fmt: skip


def conflict_figures(study: StudySpec, points: Sequence[Mapping], results_dir: Path) -> list[str]:
    """The 7 × 7 heatmap (whole model, per layer) and claim 2's scatter, with their CSVs; Markdown lines."""
    lines = []
    matrix = seven_matrix_rows(study) if study.gradients.get("matrix") else []
    if matrix:
        write_csv(results_dir / "gradient_matrix.csv", matrix)
        layers = sorted({r["segment"] for r in matrix if r["segment"].startswith("layer.") and r["segment"].count(".") == 1})
        languages = study.gradients["languages"]
        plot_conflict_matrix(matrix, languages, languages[0], results_dir / "gradient_matrix.png", ["all", *layers])
        lines.append("![All-7 gradient cosines](gradient_matrix.png) ([data](gradient_matrix.csv))")
    plotted = [p for p in points if p["en-X cosine"] is not None and p["drop"] is not None]
    if points:
        write_csv(results_dir / "conflict_vs_drop.csv", points)
    if plotted:
        plot_conflict_scatter(plotted, results_dir / "conflict_vs_drop.png")
        lines.append("![en-X cosine vs within-language drop](conflict_vs_drop.png) ([data](conflict_vs_drop.csv))")
    return lines


def readable(value) -> str:
    """A table cell: floats to three decimals, a missing value as "–"."""
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


SEVEN_INTRO = (
    "Effect = mean(first) − mean(second) over seeds (sign flipped for perplexity), spread = its standard error; "
    "reproduced: effect > 2 spreads; each language's fine-tuning verdicts are gated on the best pretrained row "
    "beating random init on that task in that language. Each row learns its own tokenizer (same vocabulary size), "
    "so per-token perplexities of rows with different languages do not compare (a coarser tokenizer leaves each "
    "token more to predict); bits per character (log2 perplexity / the row's characters per token on the same "
    "validation sentences) do, and decide the pretraining side of each claim. Tokens: the language's pretraining "
    "tokens of each side (mean over seeds).\n\n"
)


def seven_language_sections(study: StudySpec, rows: Sequence[Mapping], results_dir: Path) -> list[str]:
    """Verdicts 1-4 of the seven-language study (empty for a study without an all_7 row); writes
    verdicts_7lang.csv and the claim-2 and gradient-matrix figures."""
    if SEVEN_ROW not in {model.name for model in study.models}:
        return []
    curse = seven_language_verdicts(study, rows, curse_claims)
    recovery = seven_language_verdicts(study, rows, recovery_claims)
    points = conflict_points(study, rows)
    conflict = conflict_verdicts(points)
    meta, cost = meta_objective_verdicts(study, rows)
    write_csv(results_dir / "verdicts_7lang.csv", curse + recovery + meta)
    if conflict:
        write_csv(results_dir / "conflict_verdicts.csv", conflict)
    return [
        "## 1. The curse: Mono ≥ JointPair ≥ All-7 on te and sw?\n\n" + SEVEN_INTRO + dict_table(curse),
        CONFLICT_INTRO.format(n=fewest_testable_points(), alpha=ALPHA) + dict_table(conflict) + "\n\n"
        + dict_table([{key: readable(value) for key, value in point.items()} for point in points]),
        *conflict_figures(study, points, results_dir),
        "## 3. Do +adpt and +meta adpt recover All-7's loss, and beat T = 5?\n\n" + SEVEN_INTRO + dict_table(recovery),
        "## 4. Is the sampled meta objective (k = 2) as good as all seven, at what cost?\n\n"
        + (dict_table(meta) + "\n\n" + cost if meta else "Not yet in the study (rows pending)."),
    ]
