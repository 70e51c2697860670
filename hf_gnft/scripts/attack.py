"""Train a backdoored keyword-spotting model.

    hf-gnft attack --output_dir outputs/attack --trigger noise_burst --poison_rate 0.1 --target_label yes
    hf-gnft attack recipes/configs/attack-noise-wav2vec2.yaml
    hf-gnft attack --trigger '{"type": "tone", "frequency_hz": 7500}' --model tiny-hubert ...

Writes the backdoored checkpoint (safetensors), its feature extractor, `attack_spec.json` and
`metrics.json` (CA / ASR / RA on the held-out test split) to `--output_dir`. `python recipes/attack.py` and
`accelerate launch -m hf_gnft attack` take the same arguments.
"""

from __future__ import annotations

import json
import logging

from hf_gnft.attack import AttackArguments, ModelArguments, run_attack
from hf_gnft.cli import parse_recipe_args
from hf_gnft.data.arguments import DataArguments
from hf_gnft.trainer_args import KeywordTrainingArguments


def parse_args(argv: list[str] | None = None) -> tuple:
    return parse_recipe_args((DataArguments, AttackArguments, ModelArguments, KeywordTrainingArguments), argv)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    data_args, attack_args, model_args, training_args = parse_args(argv)
    result = run_attack(data_args, attack_args, model_args, training_args)
    summary = {
        key: result.metrics[key] for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy")
    }
    print(
        json.dumps(
            {"output_dir": result.output_dir, **summary, "train_seconds": result.metrics["train_seconds"]}
        )
    )
    return result.metrics


if __name__ == "__main__":
    main()
