"""The README's main job: the paper's pipeline end to end at toy scale, on real text, in minutes on 2 CPU cores.

    python recipes/demo.py [--output_dir runs/demo] [--data_dir ../shared/data]   ($META_XLM_DATA if set)

1. a shared BPE tokenizer and a tiny JointPair (en + sw) model  (recipes/configs/tiny_joint_pair.yaml)
2. a tiny +meta adpt model on the same tokenizer               (recipes/configs/tiny_meta_adpt.yaml)
3. per-language validation perplexity of both
4. a short NER fine-tune of both, within-language (sw) and zero-shot (en -> sw), and the results table
5. the two models' cards (README.md, NER results in model-index), copied to model_cards/demo-*.md
Text comes from <data_dir>/text when it exists, else from the Hub (Wikipedia; a large download).
Each step is a recipe run as a subprocess; the demo only chains them and prints where the outputs are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from meta_xlm.model_card import write_model_card

RECIPES = Path(__file__).resolve().parent
MODEL_CARDS = RECIPES.parent / "model_cards"
DEFAULT_DATA_DIR = Path(os.environ.get("META_XLM_DATA", RECIPES.parent.parent / "shared" / "data"))


@dataclass
class DemoArguments:
    output_dir: str = field(default="runs/demo", metadata={"help": "where every output of the demo goes"})
    data_dir: str = field(default=str(DEFAULT_DATA_DIR), metadata={"help": "data laid out as ../shared/data"})
    pretrain_steps: int = field(default=1000, metadata={"help": "optimizer steps of each tiny pretraining run"})
    finetune_train_examples: int = field(default=1000)
    finetune_eval_examples: int = field(default=300)
    copy_cards: bool = field(
        default=True, metadata={"help": "also write the cards to model_cards/demo-*.md in the repository"}
    )


def run_recipe(script: str, *args: str) -> None:
    command = [sys.executable, str(RECIPES / script), *args]
    print(f"\n$ {' '.join(command)}", flush=True)
    started = time.time()
    subprocess.run(command, check=True)
    print(f"[{script} took {time.time() - started:.0f} s]", flush=True)


def text_source(data_dir: Path) -> list[str]:
    if (data_dir / "text").is_dir():
        return ["--text_dir", str(data_dir / "text")]
    print(f"{data_dir / 'text'} not found: reading Wikipedia from the Hub instead", flush=True)
    return [
        "--text_dir",
        str(data_dir / "text"),
        "--hub_dataset",
        "wikimedia/wikipedia",
        "--hub_config_template",
        "20231101.{lang}",
    ]


def pretrain(config: str, output_dir: Path, args: DemoArguments, *extra: str) -> None:
    run_recipe(
        "pretrain.py",
        "--config",
        str(RECIPES / "configs" / config),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        str(args.pretrain_steps),
        *text_source(Path(args.data_dir)),
        *extra,
    )


def finetune(model_dir: Path, model_name: str, setting: str, output_dir: Path, args: DemoArguments) -> None:
    train_language = "sw" if setting == "within" else "en"
    run_recipe(
        "finetune.py",
        "--task",
        "ner",
        "--setting",
        setting,
        "--train_language",
        train_language,
        "--eval_languages",
        "sw",
        "--model_name_or_path",
        str(model_dir),
        "--model_name",
        model_name,
        "--data_dir",
        args.data_dir,
        "--output_dir",
        str(output_dir),
        "--epochs",
        "2",
        "--batch_sizes",
        "16",
        "--learning_rates",
        "0.001",
        "--max_grid_points",
        "1",
        "--max_train_examples",
        str(args.finetune_train_examples),
        "--max_eval_examples",
        str(args.finetune_eval_examples),
        "--use_cpu",
        "true",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    )


def perplexity_table(models: dict[str, Path]) -> str:
    scores = {name: json.loads((folder / "perplexity.json").read_text()) for name, folder in models.items()}
    languages = list(next(iter(scores.values())))
    lines = ["| model | " + " | ".join(languages) + " |", "|---" * (len(languages) + 1) + "|"]
    lines += [
        f"| {name} | " + " | ".join(f"{row[lang]:.1f}" for lang in languages) + " |"
        for name, row in scores.items()
    ]
    return "\n".join(lines)


def write_cards(models: dict[str, Path], card_names: dict[str, str], finetune_dir: Path, args) -> None:
    """Each model's card with its NER metrics (model-index); the usage code loads the folder as the user named it."""
    for name, folder in models.items():
        write_model_card(
            folder,
            model_id=str(Path(args.output_dir) / folder.name),
            metrics_files=sorted(finetune_dir.glob(f"{folder.name}-ner-*/metrics.json")),
            copy_to=MODEL_CARDS / f"{card_names[name]}.md" if args.copy_cards else None,
        )


def main(argv: list[str]) -> None:
    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=argv)
    started = time.time()
    output_dir = Path(args.output_dir).resolve()
    models = {"JointPair": output_dir / "jointpair-en-sw", "+meta adpt": output_dir / "meta-adpt-en-sw"}
    card_names = {"JointPair": "demo-joint-pair", "+meta adpt": "demo-meta-adpt"}
    pretrain("tiny_joint_pair.yaml", models["JointPair"], args)
    pretrain(
        "tiny_meta_adpt.yaml",
        models["+meta adpt"],
        args,
        "--tokenizer_name_or_path",
        str(models["JointPair"] / "tokenizer"),
    )
    table = perplexity_table(models)
    (output_dir / "perplexity.md").write_text(table + "\n", encoding="utf-8")
    print("\nValidation perplexity after pretraining (lower is better):\n" + table)

    for name, folder in models.items():
        for setting in ("within", "zero_shot"):
            finetune(folder, name, setting, output_dir / "finetune" / f"{folder.name}-ner-{setting}", args)
    run_recipe("results_table.py", str(output_dir / "finetune"), "--output_dir", str(output_dir / "tables"))
    write_cards(models, card_names, output_dir / "finetune", args)

    print(
        f"\nThe demo's models are tiny (2 layers, hidden 32, {args.pretrain_steps} steps on a few thousand sentences): "
        "they check the pipeline end to end, and their scores say nothing about the paper's findings. "
        "Paper-scale configs: recipes/configs/*.yaml (each file's header has the multi-GPU command)."
    )
    print(f"\nDemo finished in {time.time() - started:.0f} s. Outputs in {output_dir}:")
    print(
        f"  models (AutoModelForMaskedLM / AutoTokenizer .from_pretrained): {', '.join(map(str, models.values()))}"
    )
    print(f"  perplexity table: {output_dir / 'perplexity.md'}")
    print(f"  NER results table: {output_dir / 'tables' / 'results.md'}")
    print(f"  model cards: {', '.join(str(folder / 'README.md') for folder in models.values())}")
    if args.copy_cards:
        print(f"  copied to: {', '.join(str(MODEL_CARDS / (n + '.md')) for n in card_names.values())}")
    print(f"  TensorBoard: tensorboard --logdir {output_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
