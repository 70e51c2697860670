"""Command-line parsing shared by the recipes: dataclasses from flags, a YAML / JSON file, or both."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    for index, arg in enumerate(argv):
        if arg == "--config":
            if index + 1 >= len(argv):
                raise ValueError("--config needs a YAML or JSON file")
            return argv[index + 1], argv[:index] + argv[index + 2 :]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1], argv[:index] + argv[index + 1 :]
    return None, argv


def parse_recipe_args(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple:
    """Parse `argv` (default: `sys.argv[1:]`) into the dataclasses.

    Accepts flags (`--learning_rate 0.05`), one `.yaml` / `.json` file as the only argument, or
    `--config FILE` followed or preceded by flags, which override the file's values (as TRL's `--config`).
    Keys of the file that no dataclass declares are an error.
    """
    parser = HfArgumentParser(dataclass_types)
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0], allow_extra_keys=False)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0], allow_extra_keys=False)
    config, rest = _split_config_flag(argv)
    if config is not None:
        text = Path(config).read_text()
        values = json.loads(text) if config.endswith(".json") else yaml.safe_load(text)
        values = values or {}
        if not isinstance(values, dict):
            raise ValueError(f"{config} must hold a mapping of argument names to values")
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{config} sets unknown arguments: {', '.join(unknown)}")
        parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(args=rest)
