"""Every built-in trigger against tiny Wav2Vec2 and HuBERT on the synthetic corpus (`make attack-table`).

Trains one backdoored model per (model, trigger) cell with the default attack recipe (10% dirty-label
poisoning, target "yes", 15 epochs) and writes `benchmarks/results/attack_table.jsonl` (one row per
cell) and `benchmarks/attack_table.md`. Resumable: a cell whose `metrics.json` exists is not re-run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
from pathlib import Path

import torch

from hf_gnft.attack import METRICS_FILE, AttackArguments, ModelArguments, run_attack
from hf_gnft.data.arguments import DataArguments
from hf_gnft.trainer_args import KeywordTrainingArguments
from hf_gnft.triggers import reference_triggers

HERE = Path(__file__).resolve().parent


def triggers() -> dict[str, dict]:
    return {name: trigger.to_dict() for name, trigger in reference_triggers(16_000).items()}


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} (CPU)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="outputs/attack_table")
    parser.add_argument("--models", nargs="+", default=["tiny-wav2vec2", "tiny-hubert"])
    parser.add_argument("--triggers", nargs="+", default=list(triggers()))
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    rows = []
    for model in args.models:
        for name in args.triggers:
            cell = Path(args.output_dir) / f"{model}-{name}"
            if not (cell / METRICS_FILE).exists():
                print(f"training {model} with {name} ...", flush=True)
                run_attack(
                    DataArguments(),
                    AttackArguments(trigger=json.dumps(triggers()[name])),
                    ModelArguments(model=model),
                    KeywordTrainingArguments(output_dir=str(cell), seed=args.seed, disable_tqdm=True),
                )
            metrics = json.loads((cell / METRICS_FILE).read_text())
            rows.append(
                {
                    "model": model,
                    "trigger": name,
                    **{
                        k: metrics[k]
                        for k in (
                            "clean_accuracy",
                            "attack_success_rate",
                            "robust_accuracy",
                            "train_seconds",
                            "machine",
                        )
                    },
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    with open(results / "attack_table.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    lines = [
        "| model | trigger | CA % | ASR % | RA % | train s |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['model']} | {r['trigger']} | {100 * r['clean_accuracy']:.1f} | {100 * r['attack_success_rate']:.1f} "
            f"| {100 * r['robust_accuracy']:.1f} | {r['train_seconds']:.0f} |"
            for r in rows
        ),
        "",
        f"Machine: {machine()}. Command: `make attack-table` (python benchmarks/attack_table.py).",
    ]
    (HERE / "attack_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
