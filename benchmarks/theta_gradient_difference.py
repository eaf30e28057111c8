"""How much `theta_gradient="lookahead"` changes θ's update against `"recompute"` (issue 28), from real pretraining
states: one training step of the pretraining recipe, resumed from a study checkpoint, under each setting.

"recompute" steps θ on ∇_θ L_train^i(θ, φ_i^{t+1}) (Eq. 5, φ_i already updated), "lookahead" on the lookahead's
∇_θ L_train^i(θ, φ_i^t) (the authors' order). Both runs resume from the same checkpoint (weights, both optimizers'
moments, scheduler, random state, data position), so they take the same batch and the same φ step; only θ's
gradient differs, and through AdamW's moments, its update. For each state (the checkpoint, then the next
`--states - 1` states of the recompute run, Eq. 5's order) it prints, over the shared parameters θ:

    relative  ‖Δθ_lookahead − Δθ_recompute‖ / ‖Δθ_recompute‖  (Δθ: the step's whole update, weight decay in)
    cosine    cos(Δθ_lookahead, Δθ_recompute)
    size      ‖Δθ_recompute‖ / ‖θ‖ (how far the step moves θ)
    φ check   max |Δφ_lookahead − Δφ_recompute| over the language modules (0: both runs took the same φ step)

    .venv/bin/python benchmarks/theta_gradient_difference.py --states 8 \
        --cell runs/study/small_en_sw_converged/pretrain/meta_adpt_theta_lookahead/seed0/study_cell.yaml \
        --checkpoint runs/study/small_en_sw_converged/pretrain/meta_adpt_theta_lookahead/seed0/checkpoint-5500

`--cell` is a study cell's pretraining YAML (its paths are read from the repository root) and `--checkpoint` a
complete checkpoint of that cell's run (the study keeps the latest one while the run goes on: copy it aside to keep
it); every run writes under `--work_dir` (default: a temporary directory, removed at the end). Each state costs two
short runs of the recipe (~35 s each at the study's size, one thread).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from tqdm import tqdm
from transformers import AutoModelForMaskedLM

import meta_xlm  # noqa: F401  (registers the Auto classes)
from common import flat
from meta_xlm.modeling_meta_xlm import parameter_groups

REPO = Path(__file__).resolve().parents[1]


def step_number(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def one_step(cell: dict, checkpoint: Path, run_dir: Path, theta_gradient: str) -> Path:
    """The pretraining recipe resumed from `checkpoint` for one step; returns the checkpoint it saves at its end."""
    run_dir.mkdir(parents=True)
    shutil.copytree(checkpoint, run_dir / checkpoint.name)
    step = step_number(checkpoint) + 1
    config = {**cell, "output_dir": str(run_dir), "max_steps": step, "theta_gradient": theta_gradient,
              "save_total_limit": 2, "eval_strategy": "no"}  # fmt: skip
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(run_dir / "recipe.log", "w", encoding="utf-8") as log:
        subprocess.run([sys.executable, str(REPO / "recipes" / "pretrain.py"), "--config", str(run_dir / "config.yaml"),
                        "--resume_from_checkpoint", "latest"],
                       cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT, check=True)  # fmt: skip
    return run_dir / f"checkpoint-{step}"  # the Trainer saves at the last step whatever save_steps says


def split_weights(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(θ, φ) of a saved model, in float64, by parameter name."""
    model = AutoModelForMaskedLM.from_pretrained(directory, dtype=torch.float64)
    groups = parameter_groups(model)
    phi = {name: p.detach() for params in groups.languages.values() for name, p in params.items()}
    return {name: p.detach() for name, p in groups.shared.items()}, phi


def compare(before: Path, after_lookahead: Path, after_recompute: Path) -> dict[str, float]:
    theta, phi = split_weights(before)
    theta_la, phi_la = split_weights(after_lookahead)
    theta_rc, phi_rc = split_weights(after_recompute)
    step_la = flat({name: theta_la[name] - t for name, t in theta.items()})
    step_rc = flat({name: theta_rc[name] - t for name, t in theta.items()})
    return {
        "relative": float((step_la - step_rc).norm() / step_rc.norm()),
        "cosine": float(torch.nn.functional.cosine_similarity(step_la, step_rc, dim=0)),
        "update_norm": float(step_rc.norm() / flat(theta).norm()),
        "phi_check": max(float((phi_la[name] - phi_rc[name]).abs().max()) for name in phi),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", type=Path, required=True, help="the study cell's pretraining YAML")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a complete checkpoint-N of that cell's run")
    parser.add_argument("--states", type=int, default=4, help="the checkpoint and the next states-1 of the default")
    parser.add_argument("--work_dir", type=Path, default=None)
    args = parser.parse_args()
    cell = yaml.safe_load(args.cell.read_text(encoding="utf-8"))
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="theta_gradient_difference_"))
    print(f"{args.cell} from step {step_number(args.checkpoint)}, {args.states} state(s) of the recompute run")
    print("| step | relative ‖Δθ_la − Δθ_rc‖ / ‖Δθ_rc‖ | cosine | size ‖Δθ_rc‖ / ‖θ‖ | φ check |")
    print("|---|---|---|---|---|")
    state = args.checkpoint
    for _ in tqdm(range(args.states), desc="states", file=sys.stderr):
        step = step_number(state)
        lookahead = one_step(cell, state, work_dir / f"lookahead_from_{step}", "lookahead")
        recompute = one_step(cell, state, work_dir / f"recompute_from_{step}", "recompute")
        row = compare(state, lookahead, recompute)
        print(f"| {step} → {step + 1} | {row['relative']:.4f} | {row['cosine']:.5f} | {row['update_norm']:.2e} | "
              f"{row['phi_check']:.1e} |", flush=True)  # fmt: skip
        state = recompute
    if args.work_dir is None:
        shutil.rmtree(work_dir)


if __name__ == "__main__":
    main()
