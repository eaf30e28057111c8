"""The package's public API: every name in __all__ resolves, and importing it registers the Auto classes."""

import subprocess
import sys

import meta_xlm


def test_every_public_name_resolves():
    missing = [name for name in meta_xlm.__all__ if getattr(meta_xlm, name, None) is None]
    assert missing == []


def test_import_registers_model_type_with_auto_config():
    script = "import meta_xlm; from transformers import AutoConfig; print(type(AutoConfig.for_model('meta_xlm')).__name__)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "MetaXLMConfig"
