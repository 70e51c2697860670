"""Neuron-gradient analysis of a (suspect) checkpoint, optionally against its cleaned version, and a scan.

    hf-gnft analyze --model outputs/attack --output_dir outputs/analysis
    hf-gnft analyze --model outputs/attack --cleaned_model outputs/gnft --output_dir outputs/analysis
    hf-gnft scan --model some/hub-model --attack_spec attack_spec.json --layers projector

Writes `analysis.json` (per-neuron gradient magnitudes on clean and triggered clips, each neuron's category from
zeroing it, the mean gradient per category and the ratio backdoor-related / clean, CA / ASR of each model, the
scan's statistics and verdict) and PNG plots: `gradient_by_category.png`, `before_after.png` (with
`--cleaned_model`) and `per_layer.png`. The attack spec (`attack_spec.json` next to the model, or
`--attack_spec`) is needed for the categories and the triggered profile; without it, only the clean profile and
the scan are measured. The scan uses clean data alone (`--scan_split`, the validation split by default).
Checkpoints load as in `hf-gnft defend`: safetensors only, no remote code unless asked. `hf-gnft scan` is
the same command; `python recipes/analyze.py` takes the same arguments.
"""

from __future__ import annotations

import json
import logging

from hf_gnft.analysis import AnalysisArguments, run_analysis
from hf_gnft.cli import parse_recipe_args
from hf_gnft.data.arguments import DataArguments
from hf_gnft.pipeline import SuspectModelArguments


def parse_args(argv: list[str] | None = None) -> tuple:
    """(data, suspect and analysis arguments) from flags, a YAML/JSON file or both."""
    return parse_recipe_args((DataArguments, SuspectModelArguments, AnalysisArguments), argv)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    data_args, model_args, args = parse_args(argv)
    record = run_analysis(data_args, model_args, args)
    summary = {
        "output_dir": args.output_dir,
        "suspect": record["suspect"]["metrics"],
        "categories": (record["categories"] or {}).get("counts"),
        "by_category": {
            data: values["all"] for data, values in record["suspect"].get("by_category", {}).items()
        },
        "scan": {name: scan["verdict"] for name, scan in record["scan"].items()},
    }
    print(json.dumps(summary, indent=2))
    return record


if __name__ == "__main__":
    main()
