"""Import transformers' common test modules from the sdist of the installed version.

`make setup` downloads the sdist (`pip download transformers==<installed> --no-binary :all: --no-deps`) and
extracts tests/test_modeling_common.py, tests/test_configuration_common.py and the LICENSE into
`.venv/transformers-tests/` (git-ignored with the venv; the tests stay offline). Those two files import three
modules the sdist lacks (export and generation mixins, the base-config kwargs); `shims/` provides them. The
files are imported as the package `transformers_upstream_tests`, whose search path is the extracted folder
and then `shims/`, so their relative imports resolve unchanged.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest
import transformers

REPOSITORY = Path(__file__).resolve().parents[2]
UPSTREAM_DIR = REPOSITORY / ".venv" / "transformers-tests"
SHIMS_DIR = Path(__file__).resolve().parent / "shims"
PACKAGE = "transformers_upstream_tests"
FILES = ("test_modeling_common.py", "test_configuration_common.py")


def missing_reason() -> str | None:
    """Why the upstream files cannot be used, or None."""
    version_file = UPSTREAM_DIR / "VERSION"
    if not all((UPSTREAM_DIR / name).is_file() for name in FILES) or not version_file.is_file():
        return f"transformers' common test files are missing from {UPSTREAM_DIR}: run `make setup`"
    fetched = version_file.read_text().strip()
    if fetched != transformers.__version__:
        return (
            f"{UPSTREAM_DIR} holds the tests of transformers {fetched}, but {transformers.__version__} is installed: "
            "run `make setup` again"
        )
    return None


def load(module: str):
    """`transformers_upstream_tests.<module>`; skips the calling test module (fails it under CI=true) when the
    files are missing or belong to another transformers version."""
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            raise RuntimeError(reason)
        pytest.skip(reason, allow_module_level=True)
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(UPSTREAM_DIR), str(SHIMS_DIR)]
        sys.modules[PACKAGE] = package
    return importlib.import_module(f"{PACKAGE}.{module}")
