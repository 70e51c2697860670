"""The `hf-gnft` command, and the parsing its recipes share: dataclasses from flags, a YAML/JSON file or both.

    hf-gnft --help                      # the subcommands
    hf-gnft defend --help               # one recipe's flags
    hf-gnft attack recipes/configs/attack-noise-wav2vec2.yaml
    accelerate launch -m hf_gnft defend --model outputs/attack --output_dir outputs/gnft

Each subcommand runs `hf_gnft.scripts.<name>.main` on the arguments that follow it.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

import yaml
from transformers import HfArgumentParser

#: set to 1 to see the traceback of a settings or input error (as `hf-gnft --debug COMMAND ...` does)
DEBUG_ENVIRONMENT_VARIABLE = "HF_GNFT_DEBUG"


class SettingsError(ValueError):
    """A setting or an input the command line got wrong. `hf-gnft` prints it as `hf-gnft COMMAND: error: MESSAGE`
    and exits with status 2, as argparse does for its own errors."""


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is a settings or input error (printed in one line) rather than an unexpected failure (shown
    with its traceback): a `SettingsError`, or an error class of hf-gnft's own (`TriggerError`, `CleanDataError`,
    `OutputExistsError`, `SuspectNotFoundError`, ...)."""
    if isinstance(error, SettingsError):
        return True
    package = (type(error).__module__ or "").split(".")[0]
    return package == "hf_gnft" and isinstance(error, (ValueError, OSError, RuntimeError))


def settings_errors(function):
    """Decorate a recipe's argument parsing: a plain `ValueError` or `TypeError` raised while reading the settings
    (a dataclass's checks, a missing flag) becomes a `SettingsError`; hf-gnft's own errors pass unchanged."""

    @functools.wraps(function)
    def parse(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (ValueError, TypeError) as error:
            if is_user_error(error):  # already one of hf-gnft's own errors (TriggerError, PoisonError, ...)
                raise
            raise SettingsError(str(error)) from error

    return parse


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    for index, arg in enumerate(argv):
        if arg == "--config":
            if index + 1 >= len(argv):
                raise ValueError("--config needs a YAML or JSON file")
            return argv[index + 1], argv[:index] + argv[index + 2 :]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1], argv[:index] + argv[index + 1 :]
    return None, argv


@settings_errors
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


# Subcommand -> (module under hf_gnft.scripts, aliases, one-line help); static, so `--help` imports no recipe.
RECIPES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "attack": ("attack", (), "train a backdoored keyword-spotting model"),
    "defend": ("defend", (), "clean a suspect model and measure it before and after"),
    "analyze": ("analyze", ("scan",), "neuron-gradient analysis and backdoor scan of a checkpoint"),
    "benchmark": ("benchmark", (), "benchmark the defenses on a grid of models, attacks and seeds"),
    "push": ("push", (), "push a finished output folder to the Hugging Face Hub"),
    "demo": ("demo", (), "attack, then clean with FT and GN-FT, on the embedded data (make demo)"),
}


def _command_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = argparse.ArgumentParser(
        prog="hf-gnft",
        description="Remove backdoors from speech classifiers with GN-FT. "
        "`hf-gnft COMMAND --help` lists a command's flags.",
        epilog="Distributed: accelerate launch [--config_file FILE] -m hf_gnft COMMAND ...",
    )
    parser.add_argument("--version", action="version", version=f"hf-gnft {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of a settings or input error (or set {DEBUG_ENVIRONMENT_VARIABLE}=1)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    for name, (_, aliases, help_text) in RECIPES.items():
        commands.add_parser(name, aliases=list(aliases), help=help_text, add_help=False)
    return parser


def _resolve(command: str) -> str:
    for name, (module, aliases, _) in RECIPES.items():
        if command == name or command in aliases:
            return module
    raise KeyError(command)


def main(argv: list[str] | None = None) -> int:
    """Run `hf-gnft COMMAND [ARGS...]`: the recipe `hf_gnft.scripts.<COMMAND>` on ARGS.

    Args:
        argv: the arguments after `hf-gnft` (default: `sys.argv[1:]`).

    Returns:
        0 when the recipe finished; `--help`, a missing or an unknown command exit through argparse (0 or 2).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "").lower() in ("1", "true", "yes")
    while argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    # Only the first argument is the command's; everything after it belongs to the recipe's own parser.
    command = _command_parser().parse_args(argv[:1]).command
    module = importlib.import_module(f"hf_gnft.scripts.{_resolve(command)}")
    # The recipes' parsers name themselves after sys.argv[0]: make their usage line read `hf-gnft COMMAND`.
    program = sys.argv[0]
    sys.argv[0] = f"hf-gnft {command}"
    try:
        module.main(argv[1:])
    except Exception as error:
        if not is_user_error(error):
            raise  # a failure nobody expected: its traceback
        if debug:
            traceback.print_exc()
        print(f"hf-gnft {command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        sys.argv[0] = program
    return 0
