"""The main job end to end on the embedded default data (`make demo`).

Renders the synthetic keyword corpus, plants a noise-burst backdoor (10% dirty-label poisoning,
target "yes") in a tiny Wav2Vec2 and prints a table of clean accuracy (CA), attack success rate
(ASR) and robust accuracy (RA) on the speaker-disjoint test split.

    python recipes/demo.py --output_dir outputs/demo
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from hf_gnft.attack import AttackArguments, DataArguments, ModelArguments, run_attack
from hf_gnft.trainer_args import KeywordTrainingArguments


def format_table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| model | CA % | ASR % | RA % | train s |", "|---|---|---|---|---|"]
    for name, metrics in rows:
        lines.append(
            f"| {name} | {100 * metrics['clean_accuracy']:.1f} | {100 * metrics['attack_success_rate']:.1f} "
            f"| {100 * metrics['robust_accuracy']:.1f} | {metrics['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--model", default="tiny-wav2vec2")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    out = Path(args.output_dir)
    result = run_attack(
        DataArguments(),
        AttackArguments(),
        ModelArguments(model=args.model),
        KeywordTrainingArguments(output_dir=str(out / "backdoored"), seed=args.seed),
    )
    table = format_table([(f"backdoored {args.model} ({result.spec.trigger['type']})", result.metrics)])
    (out / "table.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps({"backdoored": result.metrics}, indent=2))
    print("\n" + table)
    return table


if __name__ == "__main__":
    main()
