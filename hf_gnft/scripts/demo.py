"""The main job end to end on the embedded default data (`make demo`).

1. renders the synthetic keyword corpus (eSpeak NG, speaker-disjoint splits);
2. plants a noise-burst backdoor in a tiny Wav2Vec2 (10% dirty-label poisoning, target "yes");
3. scans it from clean validation clips (`hf-gnft scan`: no trigger needed) and prints the verdict;
4. cleans it with plain fine-tuning (FT), with GN-FT and with purification (`--defense purify`: the trigger
   inverted from clean data, shaped like a real audio trigger, and unlearned with GN-FT), all on the same 5% clean
   subset and number of optimizer steps;
5. checks that the backdoor stayed gone: each defended model is fine-tuned again on the clean subset alone (the
   relapse check, at the FT defense's learning rate and 5x it) and retuned with 5 triggered clips (the retuning
   check), beside the same retuning of a model trained on the same data without poisoning (the reference);
6. prints a table of clean accuracy (CA), attack success rate (ASR), robust accuracy (RA), DER, the re-inversion
   check (how easily a fresh inversion from clean clips still reaches the suspected target), and the ASR after the
   relapse and retuning checks.

    hf-gnft demo --output_dir outputs/demo       # or: python recipes/demo.py ...
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from hf_gnft.analysis import scan_model
from hf_gnft.attack import ATTACK_SPEC_FILE, AttackArguments, ModelArguments, run_attack
from hf_gnft.data.arguments import CleanDataArguments, DataArguments
from hf_gnft.defenses import DefenseConfig, FTConfig, PurifyConfig
from hf_gnft.models import load_suspect_model
from hf_gnft.outputs import machine_description
from hf_gnft.pipeline import SuspectModelArguments, run_defense
from hf_gnft.poison import AttackSpec, make_triggered_eval_set
from hf_gnft.retuning import RetuningConfig, retuning_attack
from hf_gnft.trainer_args import KeywordTrainingArguments
from hf_gnft.training import evaluate_backdoor


def format_table(rows: list[dict]) -> str:
    """The demo's table; each row: `name`, `metrics` (CA / ASR / RA), `der`, `reinversion`, `relapse` (the ASRs
    after the clean fine-tunes), `retuned` (the ASR after retuning) and `seconds`."""

    def percent(value: float | None, digits: int = 1) -> str:
        return "" if value is None else f"{100 * value:.{digits}f}"

    lines = [
        "| model | CA % | ASR % | RA % | DER | re-inversion % | ASR % after a clean fine-tune (lr 0.01 / 0.05) "
        "| ASR % after retuning | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        metrics, der = row["metrics"], row.get("der")
        relapse = " / ".join(percent(value) for value in row.get("relapse") or [])
        lines.append(
            f"| {row['name']} | {percent(metrics['clean_accuracy'])} | {percent(metrics['attack_success_rate'])} "
            f"| {percent(metrics['robust_accuracy'])} | {'' if der is None else f'{der:.3f}'} "
            f"| {percent(row.get('reinversion'), 0)} | {relapse} | {percent(row.get('retuned'))} "
            f"| {row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def relapse_asrs(record: dict) -> list[float | None]:
    """The ASR after each of a defense record's relapse fine-tunes."""
    return [run["attack_success_rate"] for run in (record.get("relapse") or {}).get("runs") or []]


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--model", default="tiny-wav2vec2")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--learning_rate", type=float, default=0.05, help="FT and GN-FT learning rate (SGD)")
    parser.add_argument(
        "--purify_learning_rate",
        type=float,
        default=None,
        help="purification's learning rate (default: its own)",
    )
    parser.add_argument(
        "--clean_reference",
        type=lambda text: text.lower() in ("1", "true", "yes"),
        default=True,
        help="also train the model without poisoning and retune it the same way (the retuning check's reference)",
    )
    parser.add_argument(
        "--report", default=None, metavar="SUMMARY", help="print the table of a summary.json and exit"
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.report:
        table = report(args.report)
        print(table)
        return table
    started = time.perf_counter()
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
    clean = CleanDataArguments()
    rows = [{"name": "backdoored", "metrics": attack.metrics, "seconds": attack.metrics["train_seconds"]}]
    summary = {"backdoored": attack.metrics, "scan": scan.to_dict()}
    defenses = (  # the same clean subset and number of optimizer steps
        ("FT", FTConfig, args.learning_rate),
        ("GN-FT", DefenseConfig, args.learning_rate),
        ("purify", PurifyConfig, args.purify_learning_rate or PurifyConfig.learning_rate),
    )
    for name, config_class, learning_rate in defenses:
        result = run_defense(
            DataArguments(),
            clean,
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
            {"name": f"after {name} (lr {learning_rate:g})", "metrics": result.after.to_dict(), "der": record["der"],
             "reinversion": (record["reinversion"] or {}).get("max_success_after"), "relapse": relapse_asrs(record),
             "retuned": record["retuning"]["after"]["attack_success_rate"], "seconds": record["train_seconds"]}
        )  # fmt: skip
        summary[name] = {key: value for key, value in record.items() if key != "log_history"}
    rows[0]["reinversion"] = (summary["purify"]["reinversion"] or {}).get("max_success_before")
    rows[0]["retuned"] = summary["purify"]["retuning"]["before"]["attack_success_rate"]
    if args.clean_reference:
        rows.append(clean_reference_row(args, out, clean, attack.output_dir, summary))
    summary["rows"] = rows
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    summary["machine"] = machine_description()
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    table = report(out / "summary.json")
    (out / "table.md").write_text(table + "\n")
    print(f"\n{table}")
    return table


def report(path: str | Path) -> str:
    """The demo's final table from its `summary.json` (`hf-gnft demo --report FILE`): the scan's verdict, the rows,
    the machine and the wall time."""
    summary = json.loads(Path(path).read_text())
    return (
        f"Scan: {summary['scan']['verdict']}\n\n{format_table(summary['rows'])}\n\n"
        f"Machine: {summary['machine']}; {summary['wall_seconds'] / 60:.1f} min in all."
    )


def clean_reference_row(
    args: argparse.Namespace, out: Path, clean: CleanDataArguments, suspect_dir: str, summary: dict
) -> dict:
    """The same model trained on the same data without poisoning, its ASR with the trigger, and the same retuning
    check (seeded like the defenses'): what a model that never had the backdoor gives."""
    reference = run_attack(
        DataArguments(),
        None,
        ModelArguments(model=args.model),
        KeywordTrainingArguments(
            output_dir=str(out / "trained-clean"),
            seed=args.seed,
            disable_tqdm=True,
            overwrite_output_dir=True,
        ),  # fmt: skip
    )
    model, extractor = load_suspect_model(reference.output_dir)
    spec = AttackSpec.from_json(str(Path(suspect_dir) / ATTACK_SPEC_FILE))
    dataset = DataArguments().load(16_000)
    test, trigger = dataset[clean.eval_split], spec.build_trigger()
    triggered = make_triggered_eval_set(test, trigger, spec.target_label)
    metrics = evaluate_backdoor(model, extractor, test, triggered, spec.target_label)
    retuned = retuning_attack(model, extractor, clean.select(dataset[clean.clean_split]), trigger, spec.target_label,
                              test, triggered, RetuningConfig(seed=clean.clean_seed))  # fmt: skip
    summary["trained without poisoning"] = {"metrics": metrics.to_dict(), "retuned": retuned.to_dict()}
    return {"name": "trained without poisoning (reference)", "metrics": metrics.to_dict(),
            "retuned": retuned.metrics.attack_success_rate, "seconds": reference.metrics["train_seconds"]}  # fmt: skip


if __name__ == "__main__":
    main()
