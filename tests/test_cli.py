"""The recipes' shared YAML + flags parsing (meta_xlm.cli)."""

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from meta_xlm.analysis.masks import MaskGroupSpec
from meta_xlm.cli import grouped_key_values, key_value, mask_group_specs, parse_config_and_args


@dataclass
class Example:
    name: str = field(metadata={"help": "required unless the YAML file gives it"})
    steps: int = 3
    languages: list[str] = field(default_factory=lambda: ["en"])


def write_yaml(tmp_path, values) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return str(path)


def test_yaml_gives_defaults_and_flags_override(tmp_path):
    config = write_yaml(tmp_path, {"name": "from-yaml", "steps": 7, "languages": ["en", "sw"]})
    (args,) = parse_config_and_args((Example,), ["--config", config, "--steps", "11"])
    assert (args.name, args.steps, args.languages) == ("from-yaml", 11, ["en", "sw"])


@dataclass
class OneOrMany:
    language_modules: str | list[str] = "none"


@pytest.mark.parametrize(
    ("argv", "yaml_values", "expected"),
    [
        ([], None, "none"),  # the dataclass default, which HfArgumentParser alone would drop
        (["--language_modules", "adapters"], None, "adapters"),
        (["--language_modules", "ffn", "adapters"], None, ["ffn", "adapters"]),
        ([], {"language_modules": "adapters"}, "adapters"),
        ([], {"language_modules": ["ffn", "adapters"]}, ["ffn", "adapters"]),
        ([], {"language_modules": ["adapters"]}, "adapters"),
        (["--language_modules", "attention"], {"language_modules": ["ffn", "adapters"]}, "attention"),
    ],
)
def test_str_or_list_field_keeps_one_value_as_a_string(tmp_path, argv, yaml_values, expected):
    config = ["--config", write_yaml(tmp_path, yaml_values)] if yaml_values is not None else []
    (args,) = parse_config_and_args((OneOrMany,), config + argv)
    assert args.language_modules == expected


@pytest.mark.slow
def test_pretrain_recipe_takes_several_language_modules_from_the_command_line():
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    config = recipes / "configs" / "tiny_meta_adpt.yaml"
    result = subprocess.run(
        [sys.executable, str(recipes / "pretrain.py"), "--config", str(config),
         "--language_modules", "ffn", "adapters", "--print_config"],
        capture_output=True, text=True, check=False, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert yaml.safe_load(result.stdout)["language_modules"] == ["ffn", "adapters"]


def test_unknown_yaml_key_names_the_file_and_the_key(tmp_path):
    config = write_yaml(tmp_path, {"name": "x", "stepz": 7})
    with pytest.raises(SystemExit, match=r"config\.yaml: unknown key\(s\) \['stepz'\]"):
        parse_config_and_args((Example,), ["--config", config])


def test_print_config_prints_the_resolved_arguments_and_exits(tmp_path, capsys):
    config = write_yaml(tmp_path, {"name": "x"})
    with pytest.raises(SystemExit) as exit_info:
        parse_config_and_args((Example,), ["--config", config, "--steps", "5", "--print_config"])
    assert exit_info.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"name": "x", "steps": 5, "languages": ["en"]}


def test_help_lists_the_dataclass_flags_and_the_config_flag(capsys):
    with pytest.raises(SystemExit):
        parse_config_and_args((Example,), ["--help"])
    text = capsys.readouterr().out
    assert "--steps" in text and "--config" in text


def test_key_value_entries():
    assert grouped_key_values(["en=a", "sw=b", "en=c"], "corpus_files") == {"en": ["a", "c"], "sw": ["b"]}
    with pytest.raises(SystemExit, match="corpus_files entry 'en' is not LANG=PATH"):
        key_value("en", "corpus_files", "LANG=PATH")


def test_mask_group_specs_keep_colons_of_the_regex_and_reject_short_entries():
    specs = mask_group_specs([r"ffn:neuron:layer\.(?P<layer>\d+)\.(?:output):x"])
    pattern = r"layer\.(?P<layer>\d+)\.(?:output):x"
    assert specs == [MaskGroupSpec(sublayer="ffn", pattern=pattern, unit="neuron")]
    with pytest.raises(SystemExit, match="mask_groups entry 'ffn:neuron' is not SUBLAYER:UNIT:REGEX"):
        mask_group_specs(["ffn:neuron"])
