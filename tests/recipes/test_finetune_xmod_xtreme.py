"""recipes/finetune.py --freeze_language_modules (X-MOD's fine-tuning) and --xtreme_predictions_dir (XTREME's
submission layout), as a subprocess on real POS data with a tiny random MetaXLM model."""

from pathlib import Path

import pytest
from conftest import shared_data_path
from safetensors.torch import load_file
from test_finetune import checkpoint, finetune  # noqa: F401  (checkpoint is a module-scoped fixture)

from meta_xlm.tasks.splits import load_task_split

pytestmark = pytest.mark.slow


def weights(path: Path) -> dict:
    return load_file(path / "model.safetensors")


def test_xmod_finetuning_freezes_language_modules_and_writes_xtreme_predictions(checkpoint, tmp_path):  # noqa: F811
    predictions = tmp_path / "xtreme"
    record = finetune(
        checkpoint, tmp_path / "run", "--task", "pos", "--setting", "zero_shot", "--eval_languages", "te",
        "--freeze_language_modules", "true", "--xtreme_predictions_dir", str(predictions),
    )  # fmt: skip
    assert record["freeze_language_modules"] is True
    before, after = weights(checkpoint), weights(Path(record["selection"]["best"]["checkpoint"]))
    frozen = [n for n in before if ".adapter_modules." in n or ".embeddings." in n]
    assert frozen and all((before[n] == after[n]).all() for n in frozen)
    query = "roberta.encoder.layer.0.attention.self.query.weight"
    assert not (before[query] == after[query]).all()  # the shared encoder was fine-tuned

    lines = (predictions / "udpos" / "test-te.tsv").read_text(encoding="utf-8").split("\n")
    sentences = load_task_split("pos", "te", "test", str(shared_data_path()), None).select(range(16))
    blocks = "\n".join(lines).strip("\n").split("\n\n")
    assert len(blocks) == 16
    assert [len(block.split("\n")) for block in blocks] == [len(s["tokens"]) for s in sentences]
    assert set("\n".join(blocks).split("\n")) <= set(record["labels"])
