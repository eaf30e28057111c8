"""Convert an XmodForMaskedLM checkpoint (e.g. facebook/xmod-base) into a MetaXLMForMaskedLM: X-MOD's
per-language adapters become our FFN-side adapters (placement options mapped onto MetaXLMConfig.ffn_adapter_*),
attention-side adapters are added neutral (output projection zero).

    python recipes/convert_xmod.py --source facebook/xmod-base --output_dir runs/xmod-en-te \
        --languages en_XX te_IN --rename en_XX=en te_IN=te

Every chosen language must have an adapter in the source. Weights are read from safetensors only unless
--allow_pickle is given. Writes the model, the source's tokenizer, convert_config.yaml and README.md.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field

from transformers import HfArgumentParser

from meta_xlm.cli import key_value
from meta_xlm.convert import convert_xmod, save_converted


@dataclass
class ConvertXmodArguments:
    source: str = field(metadata={"help": "folder or Hub id of an XmodForMaskedLM checkpoint"})
    output_dir: str = field(metadata={"help": "where the MetaXLMForMaskedLM is written"})
    languages: list[str] | None = field(
        default=None, metadata={"help": "X-MOD codes to keep, in order (default all)"}
    )
    rename: list[str] = field(
        default_factory=list, metadata={"help": "XMOD_CODE=NEW_CODE entries, e.g. en_XX=en"}
    )
    default_language: str | None = field(
        default=None, metadata={"help": "new code used when lang_ids is omitted"}
    )
    seed: int = field(default=0, metadata={"help": "draws the new attention adapters' down-projections"})
    revision: str | None = field(default=None, metadata={"help": "revision of a Hub source"})
    allow_pickle: bool = field(
        default=False, metadata={"help": "accept pytorch_model.bin weights (unpickling)"}
    )


def parse_rename(entries: list[str]) -> dict[str, str]:
    return dict(key_value(entry, "--rename", "XMOD_CODE=NEW_CODE") for entry in entries)


def main(argv: list[str]) -> None:
    (args,) = HfArgumentParser(ConvertXmodArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model = convert_xmod(
        args.source,
        args.languages,
        rename=parse_rename(args.rename),
        default_language=args.default_language,
        seed=args.seed,
        allow_pickle=args.allow_pickle,
        revision=args.revision,
    )
    output_dir = save_converted(model, args.source, args.output_dir, asdict(args), revision=args.revision)
    logging.getLogger("convert_xmod").info("wrote %s", output_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
