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
from pathlib import Path

import yaml
from transformers import AutoTokenizer, HfArgumentParser

from meta_xlm.convert import convert_xmod
from meta_xlm.model_card import write_model_card


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
    rename = {}
    for entry in entries:
        old, separator, new = entry.partition("=")
        if not separator or not old or not new:
            raise SystemExit(f"error: --rename entry {entry!r} is not XMOD_CODE=NEW_CODE")
        rename[old] = new
    return rename


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
    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(args.source, revision=args.revision).save_pretrained(output_dir)
    (output_dir / "convert_config.yaml").write_text(
        yaml.safe_dump(asdict(args), sort_keys=False), encoding="utf-8"
    )
    write_model_card(output_dir, base_model=None if Path(args.source).exists() else args.source)
    logging.getLogger("convert_xmod").info("wrote %s", output_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
