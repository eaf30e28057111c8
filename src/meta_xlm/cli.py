"""Command-line plumbing shared by the recipes: a YAML file (--config) gives defaults, flags override them;
list flags of KEY=VALUE entries (corpus files per language) and mask-group specs (the analysis recipes)."""

from __future__ import annotations

import dataclasses
import gc
import sys
from dataclasses import asdict
from typing import get_args, get_type_hints

import yaml
from accelerate import PartialState
from transformers import HfArgumentParser, TrainingArguments

from meta_xlm.analysis.masks import MaskGroupSpec


def arguments_to_dict(arguments) -> dict:
    """A dataclass of arguments as a plain dict (TrainingArguments through its own `to_dict`)."""
    return arguments.to_dict() if isinstance(arguments, TrainingArguments) else asdict(arguments)


def one_or_many_fields(argument_classes: tuple) -> dict[str, object]:
    """Fields typed `str | list[str]` (e.g. `language_modules`) -> default (`dataclasses.MISSING` if none)."""
    fields = {}
    for argument_class in argument_classes:
        hints = get_type_hints(argument_class)
        for entry in dataclasses.fields(argument_class):
            if set(get_args(hints[entry.name])) == {str, list[str]}:
                has_factory = entry.default_factory is not dataclasses.MISSING
                fields[entry.name] = entry.default_factory() if has_factory else entry.default
    return fields


def collapse_single_values(arguments: tuple, names: set[str]) -> None:
    """`--field one` parses as ["one"]: a `str | list[str]` field keeps one value as a string (the form a YAML
    scalar gives and configs hold), several as a list."""
    for group in arguments:
        for name in names & {entry.name for entry in dataclasses.fields(group)}:
            value = getattr(group, name)
            if isinstance(value, list) and len(value) == 1:
                setattr(group, name, value[0])


def parse_config_and_args(argument_classes: tuple, argv: list[str]) -> tuple:
    """Parse `argv` into the dataclasses of `argument_classes`.

    `--config FILE.yaml` values become the parser's defaults (a key no dataclass has is an error naming the file
    and the key); the remaining flags override them. A field typed `str | list[str]` takes one value or
    several (`--language_modules ffn adapters`, or a YAML list) and holds one value as a string.
    `--print_config` prints the resolved arguments as YAML and exits, so a run's effective settings can be
    checked before it starts.
    """
    parser = HfArgumentParser(
        argument_classes,
        epilog="--config FILE.yaml: the file's keys (any flag above, without --) become defaults; "
        "--print_config: print the resolved arguments as YAML and exit.",
    )
    one_or_many = one_or_many_fields(argument_classes)
    # HfArgumentParser parses these as list flags (nargs="+") and drops a default not given by default_factory
    given = {name: value for name, value in one_or_many.items() if value is not dataclasses.MISSING}
    parser.set_defaults(**given)
    config_parser = HfArgumentParser((), add_help=False)  # --help goes to the full parser
    config_parser.add_argument("--config", default=None, help="YAML file whose keys are the flags below")
    config_parser.add_argument("--print_config", action="store_true", help="print the resolved arguments, exit")
    known, rest = config_parser.parse_known_args(argv)
    if known.config is not None:
        with open(known.config, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        unknown = sorted(set(values) - {action.dest for action in parser._actions})
        if unknown:
            raise SystemExit(
                f"error: {known.config}: unknown key(s) {unknown}; see `python {sys.argv[0]} --help`"
            )
        parser.set_defaults(**values)
        for action in parser._actions:
            if action.dest in values:
                action.required = False  # the YAML file gave it
    arguments = parser.parse_args_into_dataclasses(args=rest)
    collapse_single_values(arguments, set(one_or_many))
    if known.print_config:
        resolved = {name: value for group in arguments for name, value in arguments_to_dict(group).items()}
        print(yaml.safe_dump(resolved, sort_keys=False))
        raise SystemExit(0)
    return arguments


def key_value(entry: str, field_name: str, expected: str) -> tuple[str, str]:
    """Split one KEY=VALUE entry of a list flag; anything else is an error naming the flag and the entry."""
    key, separator, value = entry.partition("=")
    if not separator or not key or not value:
        raise SystemExit(f"error: {field_name} entry {entry!r} is not {expected}")
    return key, value


def grouped_key_values(entries: list[str], field_name: str, expected: str = "LANG=VALUE") -> dict[str, list[str]]:
    """Repeatable KEY=VALUE entries -> {key: [values in order]}."""
    grouped: dict[str, list[str]] = {}
    for entry in entries:
        key, value = key_value(entry, field_name, expected)
        grouped.setdefault(key, []).append(value)
    return grouped


def corpus_paths(entries: list[str]) -> dict[str, list[str]]:
    """LANG=PATH entries (repeatable) -> {lang: [paths]}."""
    return grouped_key_values(entries, "corpus_files", "LANG=PATH")


def mask_group_specs(entries: list[str]) -> list[MaskGroupSpec]:
    """SUBLAYER:UNIT:REGEX entries (the regex may hold colons), e.g.
    `ffn:neuron:roberta\\.encoder\\.layer\\.(?P<layer>\\d+)\\.output\\.dense\\.weight`."""
    specs = []
    for entry in entries:
        parts = entry.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise SystemExit(f"error: mask_groups entry {entry!r} is not SUBLAYER:UNIT:REGEX")
        sublayer, unit, pattern = parts
        specs.append(MaskGroupSpec(sublayer=sublayer, pattern=pattern, unit=unit))
    return specs


def leave_process_group() -> None:
    """End a recipe's process group while every process's interpreter is whole.

    Destroying the group only drops the registry's reference: the DDP-wrapped model, kept alive by the trainer's
    reference cycles, still holds gloo's backend, which was then torn down at interpreter shutdown. A rank that got
    there first aborted in some 2-process CPU runs ("terminate called without an active exception", rank 1, after
    rank 0 wrote its outputs). So the processes meet first, the cycles are collected, and the backend goes with the
    group."""
    state = PartialState()
    state.wait_for_everyone()
    gc.collect()
    state.destroy_process_group()
