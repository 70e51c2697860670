"""Command-line parsing shared by the recipes: dataclasses from the command line or a YAML / JSON file."""

from __future__ import annotations

import sys

from transformers import HfArgumentParser


def parse_recipe_args(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple:
    """Parse `argv` (default: `sys.argv[1:]`) into the dataclasses: flags, or one `.yaml` / `.json` file."""
    parser = HfArgumentParser(dataclass_types)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    return parser.parse_args_into_dataclasses(args=argv)
