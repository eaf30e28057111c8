"""recipes/pretrain.py with the surgery-vs-sampling configs (recipes/configs/surgery/), as a subprocess."""

import json
import math
import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT

SURGERY_CONFIGS = REPO_ROOT / "recipes" / "configs" / "surgery"


@pytest.mark.slow
def test_gradvac_adapter_config_trains_and_logs_the_cosines(shared_data, tmp_path):
    output_dir = tmp_path / "out"
    command = [
        sys.executable, "recipes/pretrain.py", "--config", str(SURGERY_CONFIGS / "tiny_adpt_gradvac.yaml"),
        "--text_dir", str(shared_data("text")), "--data_cache_dir", str(tmp_path / "cache"), "--output_dir",
        str(output_dir), "--max_steps", "4", "--logging_steps", "2", "--eval_strategy", "no", "--save_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "true",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-5000:]
    logs = [e for e in json.loads((output_dir / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert [e["step"] for e in logs] == [2, 4]
    for entry in logs:
        before, after = entry["surgery_cosine_before/en-sw"], entry["surgery_cosine_after/en-sw"]
        assert -1 <= before <= 1 and -1 <= after <= 1, entry


def test_every_surgery_config_differs_from_the_others_only_in_its_treatment():
    """The rows of the comparison share data, model size, steps, batch and seed."""
    treatment = {"temperature", "language_modules", "output_dir", "gradient_surgery", "surgery_granularity",
                 "gradvac_ema", "language_loss_weights"}
    configs = {path.name: yaml.safe_load(path.read_text()) for path in sorted(SURGERY_CONFIGS.glob("*.yaml"))}
    assert len(configs) == 10
    shared = [{k: v for k, v in config.items() if k not in treatment} for config in configs.values()]
    assert all(s == shared[0] for s in shared), "a surgery config changes more than its treatment"
    temperatures = sorted(c["temperature"] for n, c in configs.items() if n.startswith("tiny_temperature_"))
    assert temperatures == [1.0, 1.4285714285714286, 5.0, math.inf]
