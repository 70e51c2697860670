"""The main job end to end on the embedded default data (`make demo`).

1. renders the synthetic keyword corpus (eSpeak NG, speaker-disjoint splits);
2. plants a noise-burst backdoor in a tiny Wav2Vec2 (10% dirty-label poisoning, target "yes");
3. cleans it with plain fine-tuning (FT) and with GN-FT on the same 5% clean subset and budget;
4. prints a table of clean accuracy (CA), attack success rate (ASR), robust accuracy (RA) and DER.

    hf-gnft demo --output_dir outputs/demo       # or: python recipes/demo.py ...
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from hf_gnft.attack import AttackArguments, ModelArguments, run_attack
from hf_gnft.data.arguments import CleanDataArguments, DataArguments
from hf_gnft.defenses import DefenseConfig, FTConfig
from hf_gnft.pipeline import SuspectModelArguments, run_defense
from hf_gnft.trainer_args import KeywordTrainingArguments


def format_table(rows: list[tuple[str, dict, float | None, float]]) -> str:
    lines = ["| model | CA % | ASR % | RA % | DER | train s |", "|---|---|---|---|---|---|"]
    for name, metrics, der, seconds in rows:
        lines.append(
            f"| {name} | {100 * metrics['clean_accuracy']:.1f} | {100 * metrics['attack_success_rate']:.1f} "
            f"| {100 * metrics['robust_accuracy']:.1f} | {'' if der is None else f'{der:.3f}'} | {seconds:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--model", default="tiny-wav2vec2")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--learning_rate", type=float, default=0.05, help="defense learning rate (SGD)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    out = Path(args.output_dir)
    attack = run_attack(
        DataArguments(),
        AttackArguments(),
        ModelArguments(model=args.model),
        KeywordTrainingArguments(
            output_dir=str(out / "backdoored"), seed=args.seed, disable_tqdm=True, overwrite_output_dir=True
        ),
    )
    rows = [("backdoored", attack.metrics, None, attack.metrics["train_seconds"])]
    summary = {"backdoored": attack.metrics}
    for name, config_class in (("FT", FTConfig), ("GN-FT", DefenseConfig)):  # the same budget, two defenses
        result = run_defense(
            DataArguments(),
            CleanDataArguments(),
            SuspectModelArguments(model=attack.output_dir),
            config_class(
                output_dir=str(out / name.lower()),
                learning_rate=args.learning_rate,
                seed=args.seed,
                disable_tqdm=True,
                overwrite_output_dir=True,  # the demo starts again each time
            ),
        )
        rows.append(
            (f"after {name}", result.after.to_dict(), result.record["der"], result.record["train_seconds"])
        )
        summary[name] = {key: value for key, value in result.record.items() if key != "log_history"}
    table = format_table(rows)
    (out / "table.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print("\n" + table)
    return table


if __name__ == "__main__":
    main()
