"""Shared test fixtures: the location of ../shared/data and seeding.

Tests that read the real benchmark data call `shared_data_path(...)`. Under CI (`CI=true`) a missing file is a
failure; elsewhere the test is skipped with a reason that says where the data comes from.
"""

import os
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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
