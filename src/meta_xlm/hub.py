"""Publishing MetaXLM output folders to the Hugging Face Hub, and loading checkpoints without unpickling.

Publish (`push_to_hub`): `HfApi.upload_folder` with the patterns below, so that the commit holds exactly the
files of `publishable_files(output_dir)`:
    config.json (with the complete `auto_map`), model.safetensors (or its shards + index), the remote code
    (configuration_meta_xlm.py, modeling_meta_xlm.py: `trust_remote_code=True` works without meta-xlm installed),
    the tokenizer files, README.md (the model card, see `meta_xlm.model_card`), and the run's configuration and
    results (top-level *.yaml / *.json, e.g. pretrain_config.yaml, perplexity.json, metrics files).
Pickle files (*.bin, *.pt, *.pth, *.pkl: Trainer's training_args.bin, optimizer states) are never published, and
sub-folders (checkpoint-*, runs/) are not either.

Load (`load_pretrained`): `from_pretrained(use_safetensors=True)`, Transformers' own refusal of pickle
weights, unless the caller opts in with `allow_pickle=True`; a pickle file can run arbitrary code when it is
loaded. A checkpoint with pickle weights only gets an error saying so and how to opt in.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.utils import filter_repo_objects
from transformers.utils.hub import cached_file

from meta_xlm.modeling_meta_xlm import AUTO_MAP

logger = logging.getLogger(__name__)

REMOTE_CODE_FILES = ("configuration_meta_xlm.py", "modeling_meta_xlm.py")
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# huggingface_hub's patterns (fnmatch: "*" also matches "/"); no allow pattern matches a pickle suffix.
PUBLISHED_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.yaml", "*.yml", "*.md", "*.txt", "*.model"]
SUBFOLDER_PATTERNS = ["*/*"]  # checkpoint-*/, runs/: the run's history, not the model
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class UnsafeCheckpointError(OSError):
    """A checkpoint whose weights exist only as pickle files, loaded without `allow_pickle=True`."""


# ----------------------------------------------------------------------------------------------------------------
# Publishing
# ----------------------------------------------------------------------------------------------------------------
def publishable_files(output_dir: str | os.PathLike) -> list[str]:
    """The file names (relative to `output_dir`) a push uploads, after checking the folder is complete.

    Raises ValueError naming the first missing piece: config.json of a meta_xlm model with the complete auto_map,
    safetensors weights, the remote code files, tokenizer files, README.md.
    """
    root = Path(output_dir)
    if not root.is_dir():
        raise ValueError(
            f"{root} is not a folder (expected a model output folder written by save_pretrained)"
        )
    check_config_for_remote_code(root / "config.json")
    names = sorted(p.name for p in root.iterdir() if p.is_file())
    required = [
        (SAFETENSORS_WEIGHTS, "safetensors weights (save_pretrained writes model.safetensors)"),
        *[((name,), "remote code written by save_pretrained") for name in REMOTE_CODE_FILES],
        *[((name,), "a tokenizer file (tokenizer.save_pretrained(output_dir))") for name in TOKENIZER_FILES],
        (("README.md",), "the model card (meta_xlm.model_card.write_model_card)"),
    ]
    for alternatives, what in required:
        if not any(name in names for name in alternatives):
            raise ValueError(f"{root} has no {' or '.join(alternatives)}: publishing needs {what}")
    skipped = [name for name in names if name.endswith(PICKLE_SUFFIXES)]
    if skipped:
        logger.info("not publishing pickle files %s (only safetensors weights are published)", skipped)
    return list(
        filter_repo_objects(names, allow_patterns=PUBLISHED_PATTERNS, ignore_patterns=SUBFOLDER_PATTERNS)
    )


def check_config_for_remote_code(config_path: Path) -> dict:
    """config.json must describe a meta_xlm model whose auto_map lists every Auto class of the package."""
    if not config_path.is_file():
        raise ValueError(f"{config_path} is missing: not a model output folder")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") != "meta_xlm":
        raise ValueError(f"{config_path}: model_type is {config.get('model_type')!r}, expected 'meta_xlm'")
    auto_map = config.get("auto_map") or {}
    missing = sorted(set(AUTO_MAP) - set(auto_map))
    if missing:
        raise ValueError(
            f"{config_path}: auto_map lacks {missing}; save the model with MetaXLMPreTrainedModel.save_pretrained, "
            "which writes the complete map"
        )
    return config


def push_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Upload a model output folder (model, tokenizer, card, run config and results) to `repo_id`.

    `revision` names a branch (created from main when it does not exist); `private` is used when the repository
    is created; `create_pr` opens a pull request against main instead (not with `revision`). Returns the
    commit (its `oid` is the revision `from_pretrained(..., revision=...)` can pin).
    """
    root = Path(output_dir)
    files = publishable_files(root)
    if create_pr and revision is not None:
        raise ValueError(f"create_pr=True opens a pull request against main: drop revision={revision!r}")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    logger.info("pushing %d files of %s to %s (revision %s)", len(files), root, repo_id, revision or "main")
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=root,
        allow_patterns=PUBLISHED_PATTERNS,
        ignore_patterns=list(SUBFOLDER_PATTERNS),  # upload_folder appends its defaults to the list it gets
        commit_message=commit_message or f"Upload MetaXLM model from {root.name}",
        revision=revision,
        create_pr=create_pr,
        repo_type="model",
    )


# ----------------------------------------------------------------------------------------------------------------
# Loading without unpickling
# ----------------------------------------------------------------------------------------------------------------
def pickle_weight_files(
    name_or_path: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> list[str]:
    """The pickle weight files a local folder or a Hub repository (its cache, offline) holds."""
    if Path(name_or_path).is_dir():
        return [name for name in PICKLE_WEIGHTS if (Path(name_or_path) / name).is_file()]
    found = [
        cached_file(
            str(name_or_path),
            name,
            revision=revision,
            cache_dir=cache_dir,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
        for name in PICKLE_WEIGHTS
    ]
    return [name for name, path in zip(PICKLE_WEIGHTS, found) if path is not None]


def load_pretrained(
    model_class,
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    cache_dir: str | os.PathLike | None = None,
    **kwargs,
):
    """`model_class.from_pretrained(name_or_path, revision=..., use_safetensors=True)` unless `allow_pickle`.

    `model_class` is any class with `from_pretrained` (MetaXLMForMaskedLM, AutoModelForMaskedLM, ...); `kwargs` go
    to it (trust_remote_code, dtype, output_loading_info, ...). Pickle weights load only with
    `allow_pickle=True` (safetensors still win when both exist); a checkpoint with pickle weights only and
    no opt-in raises UnsafeCheckpointError.
    """
    try:
        return model_class.from_pretrained(
            name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            use_safetensors=None if allow_pickle else True,
            **kwargs,
        )
    except OSError as error:
        pickled = [] if allow_pickle else pickle_weight_files(name_or_path, revision, cache_dir)
        if not pickled:
            raise
        raise UnsafeCheckpointError(
            f"{name_or_path} has weights only as pickle ({', '.join(pickled)}): unpickling can run arbitrary "
            "code, so it is refused. Convert the checkpoint to safetensors (model.save_pretrained writes "
            "model.safetensors), or pass allow_pickle=True (CLI: --allow_pickle) if you trust its author."
        ) from error


__all__ = [
    "UnsafeCheckpointError",
    "load_pretrained",
    "publishable_files",
    "push_to_hub",
]
