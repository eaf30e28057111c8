"""Argument parsing shared by the analysis recipes: a YAML file (--config) gives defaults, CLI flags override."""

from __future__ import annotations

import sys

import yaml
from transformers import HfArgumentParser

from meta_xlm.analysis.masks import MaskGroupSpec


def parse_config_and_args(argument_classes: tuple, argv: list[str]):
    parser = HfArgumentParser(argument_classes)
    config_parser = HfArgumentParser(())
    config_parser.add_argument("--config", default=None)
    known, rest = config_parser.parse_known_args(argv)
    if known.config is not None:
        with open(known.config, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        known_fields = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known_fields)
        if unknown:
            raise SystemExit(
                f"error: {known.config}: unknown key(s) {unknown}; see `python {sys.argv[0]} --help`"
            )
        parser.set_defaults(**values)
        for action in parser._actions:
            if action.dest in values:
                action.required = False  # the YAML file gave it
    return parser.parse_args_into_dataclasses(args=rest)


def key_value(entry: str, field_name: str, expected: str) -> tuple[str, str]:
    key, separator, value = entry.partition("=")
    if not separator or not key or not value:
        raise SystemExit(f"error: {field_name} entry {entry!r} is not {expected}")
    return key, value


def corpus_paths(entries: list[str]) -> dict[str, list[str]]:
    """LANG=PATH entries (repeatable) -> {lang: [paths]}."""
    paths: dict[str, list[str]] = {}
    for entry in entries:
        language, path = key_value(entry, "corpus_files", "LANG=PATH")
        paths.setdefault(language, []).append(path)
    return paths


def mask_group_specs(entries: list[str]) -> list[MaskGroupSpec]:
    """SUBLAYER:UNIT:REGEX entries, e.g. `ffn:neuron:roberta\\.encoder\\.layer\\.(?P<layer>\\d+)\\.output\\.dense\\.weight`."""
    specs = []
    for entry in entries:
        parts = entry.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise SystemExit(f"error: mask_groups entry {entry!r} is not SUBLAYER:UNIT:REGEX")
        sublayer, unit, pattern = parts
        specs.append(MaskGroupSpec(sublayer=sublayer, pattern=pattern, unit=unit))
    return specs


__all__ = ["corpus_paths", "key_value", "mask_group_specs", "parse_config_and_args"]
