"""Shared test fixtures: the location of ../shared/data and seeding.

Tests that read the real benchmark data call `shared_data_path(...)`. Under CI (`CI=true`) a missing file is a
failure; elsewhere the test is skipped with a reason that says where the data comes from.
"""

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("META_XLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_data_path(*parts: str) -> Path:
    """Path of a file or folder under ../shared/data; fail under CI, skip elsewhere, when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = (
            f"{path} is missing: the real benchmark data lives in ../shared/data beside the repository "
            "(see its README.md and SOURCES.md); set META_XLM_SHARED_DATA to use another location"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def shared_data():
    return shared_data_path


def free_port() -> int:
    """A TCP port nobody listens on now: each multi-process test rendezvous on its own port, so tests can run
    side by side (`pytest -n 2`) without fighting over torch.distributed's default 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerate_launch_command(num_processes: int) -> list[str]:
    """`accelerate launch` on CPU processes (gloo for two or more), no mixed precision, no dynamo."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes > 1:
        command += ["--multi_gpu", "--main_process_port", str(free_port())]
    return command


@pytest.fixture
def accelerate_launch():
    """accelerate_launch(n) -> the command prefix that launches a script on n CPU processes."""
    return accelerate_launch_command


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_torch_thread():
    """Tiny ops run fastest on one thread; on a shared 2-core machine two threads per op contend (8x slower seen).
    Trainer and meta-step test modules use it for every test: `pytestmark = pytest.mark.usefixtures(...)`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

