"""Clean a suspect keyword-spotting model with any defense, and measure it before and after.

    hf-gnft defend --model outputs/attack --output_dir outputs/gnft                  # GN-FT (the default)
    hf-gnft defend --defense purify --model outputs/attack --output_dir outputs/purified  # purification
    hf-gnft defend --defense ft --model outputs/attack --output_dir outputs/ft       # plain FT, same budget
    hf-gnft defend --defense tsbd --model outputs/attack --output_dir outputs/tsbd --knob_grid 0.05 0.1 0.2
    hf-gnft defend --defense nad --help                                              # NAD's own flags
    hf-gnft defend --model outputs/attack --output_dir outputs/gnft --learning_rate_grid 0.02 0.05 0.1
    hf-gnft defend recipes/configs/defend-gnft.yaml                                  # or --config FILE + flags
    hf-gnft defend ... --push_to_hub true --hub_model_id me/kws-clean [--hub_dry_run true]
    hf-gnft defend ... --save_strategy steps --save_steps 50     # resumable: after a crash, rerun with
                                                                 # --resume_from_checkpoint true
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/defend.py ...

`--defense` is one of gn-ft, purify, ft, ft-sam, fp, nad, anp, clp, tsbd (`hf_gnft.DEFENSE_METHODS`); each takes its
own settings as flags (`--defense nad --help` lists them), and a setting of another defense is an error that
names the defense it belongs to. The clean data is a fraction (`--clean_fraction 0.05`) or a count
(`--clean_count`) of a split the defender trusts (the synthetic corpus by default). `attack_spec.json` next
to the model (or `--attack_spec`) is used only to measure the attack success rate. With `--knob_grid` (or
`--learning_rate_grid`), one defense runs per value of the defense's knob (`--knob` to tune another setting)
and the strongest whose clean validation accuracy drops by at most `--max_validation_drop` (2 points) is kept:
the choice never looks at the trigger or the test set.

The suspect is untrusted: weights are read from safetensors only (`--allow_pickle_weights` to read a
pickle-only checkpoint), its code never runs (`--trust_remote_code` off), and a Hub `--model_revision` is
pinned to its commit in the records. The output folder (model, feature extractor, `README.md` model card,
`defense_metrics.json`) appears only when complete; a finished one is not replaced without
`--overwrite_output_dir true`. The push reads the token from `HF_TOKEN` or the stored login (`hf auth login`)
and never writes it anywhere; a failed push keeps the local result and prints the retry command
(`hf-gnft push --folder OUTPUT_DIR --hub_model_id ...`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
from dataclasses import fields
from pathlib import Path

import yaml

from hf_gnft.cli import parse_recipe_args, settings_errors
from hf_gnft.data.arguments import CleanDataArguments, DataArguments
from hf_gnft.defenses import DefenseMethod, get_defense
from hf_gnft.pipeline import DefenseArguments, OutputArguments, SuspectModelArguments, defend, owners_of


def _config_file(argv: list[str]) -> str | None:
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        return argv[0]
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _file_values(path: str | None) -> dict:
    if path is None:
        return {}
    text = Path(path).read_text()
    values = (json.loads(text) if path.endswith(".json") else yaml.safe_load(text)) or {}
    return values if isinstance(values, dict) else {}


def defense_name(argv: list[str]) -> str:
    """The `--defense` of the command line, else of its config file, else "gn-ft"."""
    for index, arg in enumerate(argv):
        if arg == "--defense" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--defense="):
            return arg.split("=", 1)[1]
    return str(_file_values(_config_file(argv)).get("defense", "gn-ft"))


def argument_classes(method: DefenseMethod) -> tuple[type, ...]:
    """The dataclasses `hf-gnft defend --defense NAME` parses: data, clean data, suspect, defense, the method's
    config and, for a method that does not train, where to write."""
    classes = (
        DataArguments,
        CleanDataArguments,
        SuspectModelArguments,
        DefenseArguments,
        method.config_class,
    )
    return classes if method.trains else (*classes, OutputArguments)


def _check_foreign_settings(method: DefenseMethod, classes: tuple[type, ...], argv: list[str]) -> None:
    """A flag or config key that is a setting of another defense is an error naming that defense."""
    known = {f.name for cls in classes for f in fields(cls)} | {"config"}
    names = [match.group(1) for arg in argv if (match := re.match(r"--([A-Za-z_][\w-]*)", arg))]
    names += list(_file_values(_config_file(argv)))
    for name in names:
        if name not in known and (owners := owners_of(name)):
            raise ValueError(
                f"--{name} is a setting of {', '.join(owners)}, not of the {method.name!r} defense; pass "
                f"--defense {owners[0]} to use it"
            )


@settings_errors
def parse_args(argv: list[str] | None = None) -> tuple:
    """(data, clean data, suspect, defense arguments, the method's config, output arguments or None)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    method = get_defense(defense_name(argv))  # an unknown name lists the known ones
    classes = argument_classes(method)
    _check_foreign_settings(method, classes, argv)
    parsed = list(parse_recipe_args(classes, argv))  # --help prints and exits here
    if not any(arg == "--output_dir" or arg.startswith("--output_dir=") for arg in argv) and not _file_values(
        _config_file(argv)
    ).get("output_dir"):
        raise ValueError("pass --output_dir: where the cleaned model is written")
    parsed[3] = dataclasses.replace(parsed[3], defense=method.name)  # validated again, now for this method
    return (*parsed, None) if method.trains else tuple(parsed)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    data_args, clean_args, model_args, defense_args, config, output = parse_args(argv)
    result = defend(data_args, clean_args, model_args, config, defense_args, output)
    record = result.record
    print(
        json.dumps(
            {
                "output_dir": result.output_dir,
                "defense": record["defense"],
                "before": result.before.to_dict(),
                "after": result.after.to_dict(),
                "der": record["der"],
                "train_seconds": record["train_seconds"],
                record["knob"]["name"]: record["knob"]["value"],
                **({"pushed_to": result.push.url or result.push.repo_id} if result.push else {}),
            }
        )
    )
    return record


if __name__ == "__main__":
    main()
