"""Convert an XLMRobertaForMaskedLM checkpoint (e.g. xlm-roberta-base) into a MetaXLMForMaskedLM with new
language-specific modules, to continue pretraining (e.g. with meta adapters) from a strong start.

    python recipes/convert_xlmr.py --source FacebookAI/xlm-roberta-base --output_dir runs/xlmr-en-te-adpt \
        --languages en te --language_modules adapters

Flags may also come from a YAML file (`--config FILE.yaml`, meta_xlm.cli); `--language_modules ffn adapters`
gives every language both kinds.

New adapters have their output projection zero-initialised (and new ffn/attention copies equal the shared
weights), so the converted model computes exactly what the source computes. Weights are read from safetensors only
unless --allow_pickle is given. Writes the model, the source's tokenizer, convert_config.yaml and README.md.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field

from meta_xlm.cli import parse_config_and_args
from meta_xlm.convert import convert_xlmr, save_converted


@dataclass
class ConvertXLMRArguments:
    source: str = field(metadata={"help": "folder or Hub id of an XLMRobertaForMaskedLM checkpoint"})
    output_dir: str = field(metadata={"help": "where the MetaXLMForMaskedLM is written"})
    languages: list[str] = field(metadata={"help": "language codes of the new model, in lang_ids order"})
    language_modules: str | list[str] = field(
        default="adapters", metadata={"help": "none | ffn | attention | adapters | layernorm, or several"}
    )
    shared_adapters: bool = field(default=False, metadata={"help": "one adapter shared by all languages"})
    adapter_reduction_factor: int = field(
        default=4, metadata={"help": "adapter bottleneck = hidden / factor"}
    )
    default_language: str | None = field(
        default=None, metadata={"help": "language used when lang_ids is omitted"}
    )
    seed: int = field(default=0, metadata={"help": "draws the new adapters' down-projections"})
    revision: str | None = field(default=None, metadata={"help": "revision of a Hub source"})
    allow_pickle: bool = field(
        default=False, metadata={"help": "accept pytorch_model.bin weights (unpickling)"}
    )


def main(argv: list[str]) -> None:
    (args,) = parse_config_and_args((ConvertXLMRArguments,), argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model = convert_xlmr(
        args.source,
        args.languages,
        args.language_modules,
        shared_adapters=args.shared_adapters,
        adapter_reduction_factor=args.adapter_reduction_factor,
        default_language=args.default_language,
        seed=args.seed,
        allow_pickle=args.allow_pickle,
        revision=args.revision,
    )
    output_dir = save_converted(model, args.source, args.output_dir, asdict(args), revision=args.revision)
    logging.getLogger("convert_xlmr").info("wrote %s", output_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
