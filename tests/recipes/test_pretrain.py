"""recipes/pretrain.py run as a subprocess (accelerate launch), on the tiny config and real ../shared/data text."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from huggingface_hub import ModelCard

RECIPE = REPO_ROOT / "recipes" / "pretrain.py"
CONFIGS = REPO_ROOT / "recipes" / "configs"
TINY_CONFIG = CONFIGS / "tiny_joint_pair.yaml"


def recipe_args(shared_data, tmp_path, *extra, config=TINY_CONFIG):
    return [
        str(RECIPE),
        "--config",
        str(config),
        "--text_dir",
        str(shared_data("text")),
        "--data_cache_dir",
        str(tmp_path / "cache"),
        "--disable_tqdm",
        "true",
        *extra,
    ]


def run(command, timeout=600):
    """Run and return the CompletedProcess; the caller checks returncode (failures are what some tests want)."""
    return subprocess.run(
        command, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def logged_losses(output_dir: Path) -> dict[int, float]:
    state = json.loads(
        max(
            output_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1])
        ).read_text()
    )
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def assert_reloads_in_fresh_process(output_dir: Path):
    check = (
        "import sys, torch, meta_xlm\n"
        "from transformers import AutoModelForMaskedLM, AutoTokenizer\n"
        "model = AutoModelForMaskedLM.from_pretrained(sys.argv[1]); tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "assert type(model).__name__ == 'MetaXLMForMaskedLM', type(model)\n"
        "assert model.config.languages == ['en', 'sw'] == tok.init_kwargs['languages']\n"
        "batch = tok(['Habari ya leo'], return_tensors='pt')\n"
        "logits = model(**batch, lang_ids=torch.tensor([1])).logits\n"
        "assert logits.shape == (1, batch['input_ids'].shape[1], len(tok)) and torch.isfinite(logits).all()\n"
        "print('reloaded')\n"
    )
    result = run([sys.executable, "-c", check, str(output_dir)])
    assert result.returncode == 0 and "reloaded" in result.stdout, result.stderr[-3000:]
    assert_model_card_matches(output_dir)


def assert_model_card_matches(output_dir: Path):
    """The generated card parses as a Hub card and describes this checkpoint (languages, variant, steps)."""
    card = ModelCard.load(output_dir / "README.md")
    config = json.loads((output_dir / "config.json").read_text())
    assert card.data.language == config["languages"] == ["en", "sw"]
    assert config["sparse_prediction"] is False  # pretrained sparse; saved to answer as any MaskedLM (B, T, V)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "fill-mask"
    assert "jointpair" in card.data.tags
    steps = json.loads((output_dir / "trainer_state.json").read_text())["global_step"]
    assert f"| optimizer steps | {steps} |" in card.text and "`pretrain_config.yaml`" in card.text


def assert_finite_falling_loss(output_dir: Path):
    losses = list(logged_losses(output_dir).values())
    assert len(losses) >= 4 and all(math.isfinite(loss) for loss in losses), losses
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.1, f"loss did not fall: {losses}"


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2], ids=["1proc", "2proc_cpu"])
def test_accelerate_launch_trains_saves_and_reloads(shared_data, tmp_path, processes, accelerate_launch):
    output_dir = tmp_path / "out"
    result = run([*accelerate_launch(processes), *recipe_args(shared_data, tmp_path, "--output_dir", str(output_dir))])
    assert result.returncode == 0, result.stderr[-5000:]
    assert_finite_falling_loss(output_dir)
    perplexities = json.loads((output_dir / "perplexity.json").read_text())
    assert set(perplexities) == {"en", "sw"} and all(
        math.isfinite(p) and p > 1 for p in perplexities.values()
    )
    assert "eval_sw_perplexity" in result.stdout + result.stderr
    assert list((output_dir / "runs").rglob("events.out.tfevents*")), "no TensorBoard log"
    for name in ("README.md", "pretrain_config.yaml", "config.json", "tokenizer.json"):
        assert (output_dir / name).is_file(), name
    assert_reloads_in_fresh_process(output_dir)


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.slow
def test_bad_inputs_fail_with_clear_errors_before_training(shared_data, tmp_path):
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(b"not gzip at all")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    bad_yaml = write_yaml(tmp_path / "bad.yaml", TINY_CONFIG.read_text() + "hidden_sizee: 64\n")
    cases = {
        "missing file": (["--corpus_files", f"sw={tmp_path / 'nope.txt.gz'}"], "nope.txt.gz"),
        "missing folder": (["--corpus_files", f"sw={tmp_path / 'nofolder'}"], "nofolder"),
        "empty language": (["--corpus_files", f"sw={empty}"], "language 'sw' is empty"),
        "no data": (["--languages", "en", "xx"], "language 'xx' has no data"),
        "broken gzip": (["--corpus_files", f"sw={broken}"], "broken.txt.gz"),
    }
    for name, (extra, message) in cases.items():
        output_dir = tmp_path / name.replace(" ", "_")
        result = run(
            [sys.executable, *recipe_args(shared_data, tmp_path, "--output_dir", str(output_dir), *extra)]
        )
        assert result.returncode != 0, name
        assert message in result.stderr, (name, result.stderr[-2000:])
        assert not list(output_dir.glob("checkpoint-*")) and not (output_dir / "runs").exists(), name
    result = run([sys.executable, str(RECIPE), "--config", str(bad_yaml)])
    assert result.returncode != 0 and "hidden_sizee" in result.stderr and "bad.yaml" in result.stderr
    output_dir = tmp_path / "push_without_repo"
    result = run(
        [sys.executable, *recipe_args(shared_data, tmp_path, "--output_dir", str(output_dir), "--push_to_hub")]
    )
    assert result.returncode != 0 and "--push_to_hub needs --hub_model_id" in result.stderr, result.stderr[-2000:]
    assert not output_dir.exists() or not list(output_dir.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize(
    "config", sorted((REPO_ROOT / "recipes" / "configs").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_config_parses_and_names_its_launch_command(config):
    text = config.read_text()
    assert text.startswith("# ") and "accelerate launch" in text and f"recipes/configs/{config.name}" in text
    result = run([sys.executable, str(RECIPE), "--config", str(config), "--print_config"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "languages:" in result.stdout and "output_dir:" in result.stdout


@pytest.mark.slow
def test_push_to_hub_happens_once_after_saving(shared_data, tmp_path):
    """Offline (conftest), the push must fail, and only after the model, tokenizer and card were saved: the
    Trainer's own push (which contacts the Hub when it is built) stays off."""
    output_dir = tmp_path / "out"
    extra = ["--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none"]
    push = ["--push_to_hub", "--hub_model_id", "someone/meta-xlm-tiny"]
    result = run(
        [sys.executable, *recipe_args(shared_data, tmp_path, "--output_dir", str(output_dir), *extra, *push)]
    )
    assert result.returncode != 0
    assert "in push_to_hub" in result.stderr and "api/repos/create" in result.stderr, result.stderr[-3000:]
    assert "offline mode is enabled" in result.stderr, result.stderr[-3000:]
    for name in ("model.safetensors", "tokenizer.json", "README.md"):
        assert (output_dir / name).is_file(), name
    assert 'model_id = "someone/meta-xlm-tiny"' in (output_dir / "README.md").read_text()


@pytest.mark.slow
def test_compiled_pretraining_trains_one_graph_per_language_without_graph_breaks(shared_data, tmp_path):
    """`torch_compile: true` in a real Trainer run (+adpt, en + sw steps from the language sampler): the loss is
    finite and falls, dynamo reports no graph break, and what it recompiles for is the step's language (the
    `single_language` guard: one graph per language)."""
    output_dir = tmp_path / "out"
    extra = ["--output_dir", str(output_dir), "--max_steps", "12", "--logging_steps", "2", "--eval_strategy", "no",
             "--save_strategy", "no", "--report_to", "none", "--learning_rate", "0.01", "--warmup_steps", "0",
             "--language_modules", "adapters", "--torch_compile", "true"]  # fmt: skip
    command = [sys.executable, *recipe_args(shared_data, tmp_path, *extra)]
    result = subprocess.run(command, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "TORCH_LOGS": "graph_breaks,recompiles"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Graph break" not in result.stderr, result.stderr[-3000:]
    recompiled_for = set(re.findall(r"single_language == '(\w+)'", result.stderr))
    assert recompiled_for <= {"en", "sw"}, result.stderr[-3000:]
    losses = [float(loss) for loss in re.findall(r"'loss': '([0-9.]+)'", result.stdout + result.stderr)]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses), losses
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses


@pytest.mark.slow
def test_fsdp_that_accelerate_drops_on_cpu_processes_is_said_in_the_log(shared_data, tmp_path, accelerate_launch):
    """Plain training accepts `fsdp`, but accelerate builds FSDP only on accelerators: two CPU processes train
    under DDP instead, and the log says so rather than leaving the user to believe the model is sharded."""
    extra = ["--output_dir", str(tmp_path / "out"), "--max_steps", "4", "--eval_strategy", "no", "--save_strategy",
             "no", "--report_to", "none", "--language_modules", "adapters", "--fsdp", "full_shard"]  # fmt: skip
    result = run([*accelerate_launch(2), *recipe_args(shared_data, tmp_path, *extra)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fsdp=" in result.stderr and "is ignored: accelerate runs FSDP on accelerators only" in result.stderr
