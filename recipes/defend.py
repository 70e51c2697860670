"""Clean a suspect keyword-spotting model with GN-FT, and measure it before and after.

    python recipes/defend.py --model outputs/attack --output_dir outputs/gnft
    python recipes/defend.py --model outputs/attack --output_dir outputs/ft --gn_alpha 0   # plain FT, same budget
    python recipes/defend.py --model outputs/attack --output_dir outputs/gnft --learning_rate_grid 0.02 0.05 0.1
    python recipes/defend.py recipes/configs/defend-gnft.yaml
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/defend.py ...

The clean data is a fraction (`--clean_fraction 0.05`) or a count (`--clean_count`) of a split the
defender trusts (the synthetic corpus by default). `attack_spec.json` next to the model (or
`--attack_spec`) is used only to measure the attack success rate. With `--learning_rate_grid`, one defense
runs per learning rate and the largest whose clean validation accuracy drops by at most
`--max_validation_drop` (2 points) is kept: the choice never looks at the trigger or the test set.
"""

from __future__ import annotations

import json
import logging

from hf_gnft.attack import DataArguments
from hf_gnft.cli import parse_recipe_args
from hf_gnft.defense import (
    CleanDataArguments,
    DefenseConfig,
    LearningRateSearchArguments,
    SuspectModelArguments,
    run_defense,
    search_learning_rate,
)


def parse_args(argv: list[str] | None = None) -> tuple:
    return parse_recipe_args(
        (
            DataArguments,
            CleanDataArguments,
            SuspectModelArguments,
            LearningRateSearchArguments,
            DefenseConfig,
        ),
        argv,
    )


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    data_args, clean_args, model_args, search, config = parse_args(argv)
    if search.learning_rate_grid:
        result = search_learning_rate(data_args, clean_args, model_args, config, search)
    else:
        result = run_defense(data_args, clean_args, model_args, config)
    summary = {
        "output_dir": result.output_dir,
        "before": result.before.to_dict(),
        "after": result.after.to_dict(),
    }
    print(
        json.dumps(
            {
                **summary,
                "der": result.record["der"],
                "train_seconds": result.record["train_seconds"],
                "learning_rate": result.record["optim"]["learning_rate"],
            }
        )
    )
    return result.record


if __name__ == "__main__":
    main()
