"""List-valued flags of the analysis recipes (the YAML + flags parsing itself is `meta_xlm.cli`)."""

from __future__ import annotations

from meta_xlm.analysis.masks import MaskGroupSpec
from meta_xlm.cli import grouped_key_values


def corpus_paths(entries: list[str]) -> dict[str, list[str]]:
    """LANG=PATH entries (repeatable) -> {lang: [paths]}."""
    return grouped_key_values(entries, "corpus_files", "LANG=PATH")


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


__all__ = ["corpus_paths", "mask_group_specs"]
