"""The main job end to end on the embedded default data (`make demo`).

1. renders the synthetic keyword corpus (eSpeak NG, speaker-disjoint splits);
2. plants a noise-burst backdoor in a tiny Wav2Vec2 (10% dirty-label poisoning, target "yes");
3. scans it from clean validation clips (`hf-gnft scan`: no trigger needed) and prints the verdict;
4. cleans it with plain fine-tuning (FT), with GN-FT and with purification (`--defense purify`: the trigger
   inverted from the clean subset and unlearned with GN-FT), all on the same 5% clean subset and number of
   optimizer steps;
5. prints a table of clean accuracy (CA), attack success rate (ASR), robust accuracy (RA), DER and the re-inversion
   check (how easily a fresh inversion from clean clips still reaches the suspected target).

    hf-gnft demo --output_dir outputs/demo       # or: python recipes/demo.py ...
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from hf_gnft.analysis import scan_model
from hf_gnft.attack import AttackArguments, ModelArguments, run_attack
from hf_gnft.data.arguments import CleanDataArguments, DataArguments
from hf_gnft.defenses import DefenseConfig, FTConfig, PurifyConfig
from hf_gnft.models import load_suspect_model
from hf_gnft.pipeline import SuspectModelArguments, run_defense
from hf_gnft.trainer_args import KeywordTrainingArguments


def format_table(rows: list[tuple[str, dict, float | None, float | None, float]]) -> str:
    lines = [
        "| model | CA % | ASR % | RA % | DER | re-inversion % | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, metrics, der, reinverted, seconds in rows:
        lines.append(
            f"| {name} | {100 * metrics['clean_accuracy']:.1f} | {100 * metrics['attack_success_rate']:.1f} "
            f"| {100 * metrics['robust_accuracy']:.1f} | {'' if der is None else f'{der:.3f}'} "
            f"| {'' if reinverted is None else f'{100 * reinverted:.0f}'} | {seconds:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--model", default="tiny-wav2vec2")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--learning_rate", type=float, default=0.05, help="FT and GN-FT learning rate (SGD)")
    parser.add_argument(
        "--purify_learning_rate", type=float, default=0.01, help="purification's learning rate (its default)"
    )
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
    model, extractor = load_suspect_model(attack.output_dir)
    scan = scan_model(model, extractor, DataArguments().load(16_000)["validation"], progress=False)
    print(f"\nScan of the backdoored model (clean validation clips, no trigger): {scan.verdict}\n")
    rows = [("backdoored", attack.metrics, None, None, attack.metrics["train_seconds"])]
    summary = {"backdoored": attack.metrics, "scan": scan.to_dict()}
    defenses = (  # the same clean subset and number of optimizer steps
        ("FT", FTConfig, args.learning_rate),
        ("GN-FT", DefenseConfig, args.learning_rate),
        ("purify", PurifyConfig, args.purify_learning_rate),
    )
    for name, config_class, learning_rate in defenses:
        result = run_defense(
            DataArguments(),
            CleanDataArguments(),
            SuspectModelArguments(model=attack.output_dir),
            config_class(
                output_dir=str(out / name.lower()),
                learning_rate=learning_rate,
                seed=args.seed,
                disable_tqdm=True,
                overwrite_output_dir=True,  # the demo starts again each time
            ),
        )
        record = result.record
        rows.append(
            (f"after {name} (lr {learning_rate:g})", result.after.to_dict(), record["der"],
             (record["reinversion"] or {}).get("max_success_after"), record["train_seconds"])
        )  # fmt: skip
        summary[name] = {key: value for key, value in record.items() if key != "log_history"}
    rows[0] = (*rows[0][:3], (summary["purify"]["reinversion"] or {}).get("max_success_before"), rows[0][4])
    table = format_table(rows)
    (out / "table.md").write_text(f"Scan: {scan.verdict}\n\n{table}\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nScan: {scan.verdict}\n\n{table}")
    return table


if __name__ == "__main__":
    main()
