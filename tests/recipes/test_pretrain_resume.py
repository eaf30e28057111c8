"""recipes/pretrain.py killed with SIGKILL after a checkpoint, then resumed: the losses must equal an uninterrupted
run's (in a file of its own so that the test runner can run it beside test_pretrain.py's other recipe runs)."""

import os
import signal
import subprocess
import time

import pytest
from conftest import REPO_ROOT
from test_pretrain import CONFIGS, logged_losses, recipe_args, run

# Resumed losses must equal the uninterrupted run's: same CPU kernels, same data order and RNG state.
RESUME_TOLERANCE = 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("config", ["tiny_joint_pair.yaml", "tiny_meta_adpt.yaml"])
def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted_run(shared_data, tmp_path, config, accelerate_launch):
    """Data order, sampler state, masks and both optimizers (θ's and, for +meta adpt, φ's) must resume."""
    steps = ["--max_steps", "80", "--save_steps", "10", "--logging_steps", "5", "--eval_strategy", "no"]
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference = run(
        [
            *accelerate_launch(1),
            *recipe_args(
                shared_data, tmp_path, "--output_dir", str(reference_dir), *steps, config=CONFIGS / config
            ),
        ]
    )
    assert reference.returncode == 0, reference.stderr[-5000:]

    command = [
        *accelerate_launch(1),
        *recipe_args(shared_data, tmp_path, "--output_dir", str(killed_dir), *steps, config=CONFIGS / config),
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while not (killed_dir / "checkpoint-10" / "checkpoint_complete").exists():
        assert process.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "model.safetensors").exists(), "the run finished before it was killed"

    resumed = run([*command, "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    expected, found = logged_losses(reference_dir), logged_losses(killed_dir)
    assert set(found) == set(expected)
    for step, loss in expected.items():
        assert found[step] == pytest.approx(loss, abs=RESUME_TOLERANCE), (step, found[step], loss)
