"""Publish a MetaXLM output folder to the Hugging Face Hub: model (safetensors + remote code, complete auto_map),
tokenizer, model card (README.md) and the run's configuration and results, in one commit.

    python recipes/push_to_hub.py --output_dir runs/jointpair-te-meta-adpt --hub_model_id my-org/jointpair-te \
        [--revision v1] [--private] [--metrics_files runs/ner-te/metrics.json ...] [--dry_run]

The card is (re)generated from the folder unless --keep_card is given (then the folder's README.md is published
as it is). --dry_run writes the card and lists the files that would be uploaded, without any network access.
Authentication is huggingface_hub's (HF_TOKEN or `hf auth login`).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from meta_xlm.hub import publishable_files, push_to_hub
from meta_xlm.model_card import write_model_card

logger = logging.getLogger("push_to_hub")


@dataclass
class PushArguments:
    output_dir: str = field(metadata={"help": "folder written by a recipe (save_pretrained + tokenizer)"})
    hub_model_id: str = field(metadata={"help": "repository id, e.g. my-org/meta-xlm-jointpair-te"})
    revision: str | None = field(default=None, metadata={"help": "branch to push to (created when missing)"})
    private: bool | None = field(default=None, metadata={"help": "create the repository as private"})
    commit_message: str | None = field(default=None)
    create_pr: bool = field(default=False, metadata={"help": "open a pull request instead of pushing"})
    keep_card: bool = field(default=False, metadata={"help": "publish the folder's README.md unchanged"})
    license: str = field(default="apache-2.0")
    datasets: list[str] = field(default_factory=list, metadata={"help": "Hub ids of the data sets used"})
    tags: list[str] = field(default_factory=list)
    metrics_files: list[str] = field(default_factory=list, metadata={"help": "downstream metrics JSON files"})
    hardware: str | None = field(default=None, metadata={"help": "where training ran, e.g. '4 × V100'"})
    num_processes: int | None = field(default=None, metadata={"help": "data-parallel processes of the run"})
    findings: str | None = field(default=None, metadata={"help": "one sentence on what the run found"})
    dry_run: bool = field(
        default=False, metadata={"help": "write the card and list the files; upload nothing"}
    )


def main(argv: list[str]) -> None:
    (args,) = HfArgumentParser(PushArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not args.keep_card:
        write_model_card(
            args.output_dir,
            model_id=args.hub_model_id,
            license=args.license,
            datasets=args.datasets,
            tags=args.tags,
            metrics_files=args.metrics_files,
            hardware=args.hardware,
            num_processes=args.num_processes,
            findings=args.findings,
        )
    files = publishable_files(args.output_dir)
    if args.dry_run:
        print("\n".join(files))
        return
    commit = push_to_hub(
        args.output_dir,
        args.hub_model_id,
        revision=args.revision,
        private=args.private,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
    )
    logger.info("pushed %d files: %s", len(files), commit.commit_url)


if __name__ == "__main__":
    main(sys.argv[1:])
