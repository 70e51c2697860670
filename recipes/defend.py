"""Clean a suspect keyword-spotting model with GN-FT, and measure it before and after.

    python recipes/defend.py --model outputs/attack --output_dir outputs/gnft
    python recipes/defend.py --model outputs/attack --output_dir outputs/ft --gn_alpha 0   # plain FT, same budget
    python recipes/defend.py --model outputs/attack --output_dir outputs/gnft --learning_rate_grid 0.02 0.05 0.1
    python recipes/defend.py recipes/configs/defend-gnft.yaml
    python recipes/defend.py --model outputs/attack --output_dir outputs/gnft --push_to_hub --hub_model_id me/kws-clean
    python recipes/defend.py ... --hub_dry_run true          # list what a push would upload, upload nothing
    python recipes/defend.py ... --save_strategy steps --save_steps 50   # resumable: after a crash, rerun with
                                                             # --resume_from_checkpoint true
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/defend.py ...

The clean data is a fraction (`--clean_fraction 0.05`) or a count (`--clean_count`) of a split the
defender trusts (the synthetic corpus by default). `attack_spec.json` next to the model (or
`--attack_spec`) is used only to measure the attack success rate. With `--learning_rate_grid`, one defense
runs per learning rate and the largest whose clean validation accuracy drops by at most
`--max_validation_drop` (2 points) is kept: the choice never looks at the trigger or the test set.

The suspect is untrusted: weights are read from safetensors only (`--allow_pickle_weights` to read a
pickle-only checkpoint), its code never runs (`--trust_remote_code` off), and a Hub `--model_revision` is
pinned to its commit in the records. The output folder (model, feature extractor, `README.md` model card,
`defense_metrics.json`) appears only when complete; a finished one is not replaced without
`--overwrite_output_dir true`. The push reads the token from `HF_TOKEN` or the stored login (`hf auth login`)
and never writes it anywhere; a failed push keeps the local result and prints the retry command
(`python recipes/push.py --folder OUTPUT_DIR --hub_model_id ...`).
"""

from __future__ import annotations

import json
import logging

from hf_gnft.cli import parse_recipe_args
from hf_gnft.data.arguments import CleanDataArguments, DataArguments
from hf_gnft.defenses.gnft_config import DefenseConfig
from hf_gnft.pipeline import (
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
                **({"pushed_to": result.push.url or result.push.repo_id} if result.push else {}),
            }
        )
    )
    return result.record


if __name__ == "__main__":
    main()
