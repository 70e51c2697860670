"""Validate the backdoor scan: backdoored vs clean tiny models, every built-in trigger, several seeds.

The model zoo: for each model (default: tiny Wav2Vec2; `--models tiny-wav2vec2 tiny-hubert` adds HuBERT), one
backdoored model per built-in trigger (`hf_gnft.triggers.reference_triggers`: 10% dirty-label poisoning) and
training seed, the target class changing with the seed (yes, down, on), and clean models trained on the same data
without poisoning; 8 epochs each. Each model is trained once and cached under `--zoo_dir` (resumable). Then every
model is scanned from clean data alone and the scores' separation is reported (AUROC, with the calibrated
threshold's false-positive and detection rates), and the shipped calibration
(`hf_gnft/analysis/scan_calibration.json`) is rewritten from it.

    python benchmarks/scan_validation.py                 # train what is missing, scan, report, calibrate
    python benchmarks/scan_validation.py --train_only    # the zoo only
    python benchmarks/scan_validation.py --report_only   # re-evaluate the finished scans in results.jsonl
    python benchmarks/scan_validation.py --models tiny-hubert --output_dir benchmarks/scan-hubert --transfer
                                                         # judge other models by the shipped calibration
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hf_gnft.analysis.scan import (
    CALIBRATION_FILE,
    CLASS_VALUES,
    STATISTICS,
    ScanCalibration,
    auroc,
    calibrate_threshold,
    scan_model,
)
from hf_gnft.attack import (
    ATTACK_SPEC_FILE,
    METRICS_FILE,
    AttackArguments,
    ModelArguments,
    run_attack,
    run_clean_training,
)
from hf_gnft.data.arguments import DataArguments
from hf_gnft.data.keywords import KEYWORDS
from hf_gnft.models import load_suspect_model
from hf_gnft.outputs import atomic_write_text, machine_description
from hf_gnft.trainer_args import KeywordTrainingArguments
from hf_gnft.triggers import reference_triggers

HERE = Path(__file__).resolve().parent
MODELS = ["tiny-wav2vec2"]


def target_for_seed(seed: int) -> str:
    """The backdoor's target class varies with the seed (yes, down, on, ...), so that a scan cannot score well
    by finding something special about one class."""
    return KEYWORDS[(3 * seed) % len(KEYWORDS)]


def zoo_cells(models: list[str], triggers: list[str], seeds: list[int], clean_seeds: list[int]) -> list[dict]:
    """Every model of the zoo, model by model and seed by seed (a partly trained zoo holds clean and backdoored
    models of the first architecture)."""
    cells = []
    for model in models:
        for seed in sorted(set(seeds) | set(clean_seeds)):
            if seed in clean_seeds:
                cells.append(
                    {"model": model, "trigger": None, "seed": seed, "name": f"{model}-clean-s{seed}"}
                )
            if seed in seeds:
                cells.extend(
                    {"model": model, "trigger": trigger, "seed": seed, "name": f"{model}-{trigger}-s{seed}"}
                    for trigger in triggers
                )
    return cells


def train_cell(cell: dict, zoo_dir: Path, epochs: float) -> Path:
    """Train one zoo model unless it is cached; returns its folder."""
    path = zoo_dir / cell["name"]
    if (path / METRICS_FILE).exists():
        return path
    print(f"{time.strftime('%H:%M:%S')} training {cell['name']} ...", flush=True)
    training = KeywordTrainingArguments(
        output_dir=str(path), num_train_epochs=epochs, seed=cell["seed"], disable_tqdm=True, report_to="none"
    )
    if cell["trigger"] is None:
        run_clean_training(DataArguments(), ModelArguments(model=cell["model"]), training)
    else:
        trigger = reference_triggers(16_000)[cell["trigger"]].to_dict()
        run_attack(
            DataArguments(),
            AttackArguments(
                trigger=json.dumps(trigger),
                poison_seed=cell["seed"],
                target_label=target_for_seed(cell["seed"]),
            ),
            ModelArguments(model=cell["model"]),
            training,
        )
    metrics = json.loads((path / METRICS_FILE).read_text())
    print(
        f"  {cell['name']}: CA {100 * metrics['clean_accuracy']:.1f}"
        + (f" ASR {100 * metrics['attack_success_rate']:.1f}" if cell["trigger"] else ""),
        flush=True,
    )
    return path


def scan_cell(cell: dict, clean, calibration: ScanCalibration, max_clips: int) -> dict:
    """Scan one zoo model from the clean clips; a row of `results.jsonl`."""
    path = Path(cell["path"])
    model, extractor = load_suspect_model(str(path))
    result = scan_model(model, extractor, clean, calibration=calibration, max_clips=max_clips, progress=False)
    metrics = json.loads((path / METRICS_FILE).read_text())
    spec = json.loads((path / ATTACK_SPEC_FILE).read_text()) if cell["trigger"] else None
    return {
        "name": cell["name"],
        "model": cell["model"],
        "trigger": cell["trigger"],
        "seed": cell["seed"],
        "backdoored": cell["trigger"] is not None,
        "target": spec["target_name"] if spec else None,
        "clean_accuracy": metrics["clean_accuracy"],
        "attack_success_rate": metrics.get("attack_success_rate"),
        "statistics": result.statistics,
        "suspected_targets": result.suspected_targets,
        "per_class": result.per_class,
        "layer_tails": result.layer_tails,
        "seconds": round(result.seconds, 2),
        "num_clips": result.num_clips,
    }


def evaluate(rows: list[dict], calibration_seeds: list[int], calibration_clean_seeds: list[int]) -> dict:
    """AUROC of every statistic (all models, and per trigger against all clean models); the statistic with the
    best AUROC on the calibration half (ties: the larger standardised separation there), its threshold from that half's clean models, and its detection and
    false-positive rates on the held-out half; how often the class-wise statistics point at the true target."""

    def scores(statistic: str, subset: list[dict], backdoored: bool) -> list[float]:
        return [r["statistics"][statistic] for r in subset if r["backdoored"] == backdoored]

    calibrating = [
        r for r in rows if r["seed"] in (calibration_seeds if r["backdoored"] else calibration_clean_seeds)
    ]
    held_out = [r for r in rows if r not in calibrating]
    triggers = sorted({r["trigger"] for r in rows if r["backdoored"]})
    report: dict = {"statistics": {}}
    for statistic in STATISTICS:
        entry = {"auroc": auroc(scores(statistic, rows, True), scores(statistic, rows, False))}
        entry["per_trigger"] = {
            t: auroc(
                scores(statistic, [r for r in rows if r["trigger"] in (t, None)], True),
                scores(statistic, rows, False),
            )
            for t in triggers
        }
        entry["calibration_auroc"] = auroc(
            scores(statistic, calibrating, True), scores(statistic, calibrating, False)
        )
        report["statistics"][statistic] = entry

    def separation(statistic: str) -> float:
        """(mean backdoored − mean clean) / pooled sd on the calibration half: breaks AUROC ties."""
        positive, negative = scores(statistic, calibrating, True), scores(statistic, calibrating, False)
        spread = np.sqrt((np.var(positive, ddof=1) + np.var(negative, ddof=1)) / 2)
        return float((np.mean(positive) - np.mean(negative)) / max(spread, 1e-12))

    for statistic in STATISTICS:
        report["statistics"][statistic]["calibration_separation"] = separation(statistic)
    chosen = max(
        STATISTICS,
        key=lambda name: (
            report["statistics"][name]["calibration_auroc"],
            report["statistics"][name]["calibration_separation"],
        ),
    )
    threshold = calibrate_threshold(scores(chosen, calibrating, False))
    held_positive, held_negative = scores(chosen, held_out, True), scores(chosen, held_out, False)
    report["chosen"] = {
        "statistic": chosen,
        "threshold": threshold,
        "held_out_auroc": auroc(held_positive, held_negative),
        "held_out_detection_rate": float(np.mean([v > threshold for v in held_positive])),
        "held_out_false_positive_rate": float(np.mean([v > threshold for v in held_negative])),
        "held_out_backdoored": len(held_positive),
        "held_out_clean": len(held_negative),
        "shipped_threshold": calibrate_threshold(scores(chosen, rows, False)),
    }
    shipped = report["chosen"]["shipped_threshold"]
    report["chosen"] |= {  # in-sample, at the shipped threshold (every clean model calibrates it)
        "detection_rate": float(np.mean([v > shipped for v in scores(chosen, rows, True)])),
        "false_positive_rate": float(np.mean([v > shipped for v in scores(chosen, rows, False)])),
    }
    report["target_identified"] = {
        statistic: float(
            np.mean([r["suspected_targets"][statistic] == r["target"] for r in rows if r["backdoored"]])
        )
        for statistic in (*CLASS_VALUES, "universal_perturbation_gap")
    }
    report["seconds_per_scan"] = float(np.mean([r["seconds"] for r in rows]))
    report["models"] = {
        "backdoored": sum(r["backdoored"] for r in rows),
        "clean": sum(not r["backdoored"] for r in rows),
    }
    return report


def write_report(rows: list[dict], report: dict, out: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    triggers = sorted({r["trigger"] for r in rows if r["backdoored"]})
    groups = ["clean", *triggers]
    chosen = report["chosen"]
    lines = [
        f"Scan validation: {report['models']['backdoored']} backdoored and {report['models']['clean']} clean models "
        f"({', '.join(sorted({r['model'] for r in rows}))}); each scanned from {rows[0]['num_clips']} clean clips of "
        "the validation split, without the trigger. AUROC: backdoored vs clean (0.5 = chance).",
        "",
        "| statistic | AUROC (all) | " + " | ".join(triggers) + " | AUROC (calibration half) |",
        "|---|---|" + "---|" * len(triggers) + "---|",
    ]
    for statistic, entry in report["statistics"].items():
        per = " | ".join(f"{entry['per_trigger'][t]:.2f}" for t in triggers)
        lines.append(f"| {statistic} | {entry['auroc']:.2f} | {per} | {entry['calibration_auroc']:.2f} |")
    lines += [
        "",
        f"Verdict statistic (best AUROC on the calibration half, ties broken by its standardised separation): "
        f"`{chosen['statistic']}`, threshold "
        f"{chosen['threshold']:.3g} (mean + 2 sd of the calibration half's clean models, at least their maximum).",
        f"Held out ({chosen['held_out_backdoored']} backdoored, {chosen['held_out_clean']} clean): AUROC "
        f"{chosen['held_out_auroc']:.2f}, detected {100 * chosen['held_out_detection_rate']:.0f}%, false positives "
        f"{100 * chosen['held_out_false_positive_rate']:.0f}%.",
        "Target class identified by the class-wise statistics: "
        + ", ".join(f"{k} {100 * v:.0f}%" for k, v in report["target_identified"].items())
        + " of the backdoored models.",
        f"Cost: {report['seconds_per_scan']:.1f} s per scan.",
        "",
        "| model | trigger | seed | target | CA | ASR | " + " | ".join(STATISTICS) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(STATISTICS),
    ]
    for r in rows:
        stats = " | ".join(f"{r['statistics'][s]:.3g}" for s in STATISTICS)
        lines.append(f"{model_cells(r)} {stats} |")
    lines += ["", f"Command: `{command}`. Machine: {machine_description()}."]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")

    columns = 3
    figure, axes = plt.subplots(
        -(-len(STATISTICS) // columns), columns, figsize=(4.6 * columns, 3.6 * -(-len(STATISTICS) // columns))
    )
    rng = np.random.default_rng(0)
    for axis, statistic in zip(axes.flat, STATISTICS, strict=True):
        for x, group in enumerate(groups):
            values = [r["statistics"][statistic] for r in rows if (r["trigger"] or "clean") == group]
            axis.scatter(x + rng.uniform(-0.15, 0.15, len(values)), values, s=14,
                         color="#1f77b4" if group == "clean" else "#d62728")  # fmt: skip
        if statistic == chosen["statistic"]:
            axis.axhline(chosen["shipped_threshold"], color="k", linestyle=":", linewidth=1,
                         label="shipped threshold")  # fmt: skip
            axis.legend(fontsize=7, loc="upper left")
        axis.set_xticks(range(len(groups)))
        axis.set_xticklabels(groups, rotation=45, ha="right", fontsize=7)
        axis.set_title(f"{statistic}\nAUROC {report['statistics'][statistic]['auroc']:.2f}", fontsize=8)
        axis.grid(alpha=0.3, axis="y")
    figure.suptitle("Backdoor scan from clean data: clean (blue) vs backdoored (red) models", fontsize=9)
    figure.tight_layout()
    figure.savefig(out / "scan.png", dpi=110)
    plt.close(figure)


def model_cells(row: dict) -> str:
    """The first cells of a model's row in the reports: model, trigger, seed, target, CA and ASR (%)."""
    asr = f"{100 * row['attack_success_rate']:.1f}" if row["attack_success_rate"] is not None else ""
    return (
        f"| {row['model']} | {row['trigger'] or 'clean'} | {row['seed']} | {row['target'] or ''} "
        f"| {100 * row['clean_accuracy']:.1f} | {asr} |"
    )


def transfer_report(rows: list[dict], calibration: ScanCalibration, out: Path, command: str) -> None:
    """AUROC of every statistic on these models, and the shipped verdict's detections and false positives."""
    statistic, threshold = calibration.statistic, calibration.threshold
    positive = [r for r in rows if r["backdoored"]]
    negative = [r for r in rows if not r["backdoored"]]
    aurocs = {
        name: auroc([r["statistics"][name] for r in positive], [r["statistics"][name] for r in negative])
        for name in STATISTICS
    }
    detected = [r for r in positive if r["statistics"][statistic] > threshold]
    flagged = [r for r in negative if r["statistics"][statistic] > threshold]
    identified = [r for r in positive if r["suspected_targets"].get(statistic) == r["target"]]
    lines = [
        f"Transfer of the shipped scan calibration (`{statistic}` > {threshold:.3g}) to {len(positive)} backdoored "
        f"and {len(negative)} clean {'/'.join(sorted({r['model'] for r in rows}))} models. The calibration: "
        f"{calibration.source or 'no source recorded'}.",
        "",
        "| statistic | AUROC |",
        "|---|---|",
        *(f"| {name} | {value:.2f} |" for name, value in aurocs.items()),
        "",
        f"At the shipped threshold: detected {len(detected)} of {len(positive)} backdoored "
        f"({', '.join(r['trigger'] for r in detected) or 'none'}), flagged {len(flagged)} of {len(negative)} clean; "
        f"target identified for {len(identified)} of {len(positive)}.",
        "",
        "| model | trigger | seed | target | CA | ASR | " + statistic + " | suspected target |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"{model_cells(r)} {r['statistics'][statistic]:.3g} | {r['suspected_targets'].get(statistic, '')} |"
            for r in rows
        ),
        "",
        f"Command: `{command}`. Machine: {machine_description()}.",
    ]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--zoo_dir", default="outputs/scan_zoo")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--triggers", nargs="+", default=list(reference_triggers(16_000)))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--clean_seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5, 6, 7])
    # 8 epochs (CA 95-97%, like the 15 of the attack table) keep the zoo within a sitting on 2 cores
    parser.add_argument("--epochs", type=float, default=8.0)
    parser.add_argument("--train_only", action="store_true")
    parser.add_argument("--output_dir", default=str(HERE / "scan"))
    parser.add_argument("--max_clips", type=int, default=200)
    parser.add_argument("--calibration_seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--calibration_clean_seeds", nargs="+", type=int, default=[0, 1, 4, 5])
    parser.add_argument(
        "--transfer", action="store_true",
        help="judge these models with the shipped calibration (another architecture, say) instead of calibrating",
    )  # fmt: skip
    parser.add_argument(
        "--report_only", action="store_true",
        help="re-evaluate the finished scans in OUTPUT_DIR/results.jsonl without training or scanning anything",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    zoo_dir = Path(args.zoo_dir)
    cells = zoo_cells(args.models, args.triggers, args.seeds, args.clean_seeds)
    out = Path(args.output_dir)
    results = out / "results.jsonl"
    done = (
        {
            json.loads(line)["name"]: json.loads(line)
            for line in results.read_text().splitlines()
            if line.strip()
        }
        if results.exists()
        else {}
    )
    if args.report_only:
        missing = [cell["name"] for cell in cells if cell["name"] not in done]
        if missing:
            parser.error(f"--report_only: {len(missing)} cells have no scan in {results} yet: {missing[:4]}")
    else:
        for cell in cells:  # a model already scanned needs no training
            if cell["name"] not in done:
                cell["path"] = str(train_cell(cell, zoo_dir, args.epochs))
    if args.train_only:
        return
    out.mkdir(parents=True, exist_ok=True)
    clean = None if args.report_only else DataArguments().load(16_000)["validation"]
    # every statistic is computed whatever the calibration; this one only decides the printed verdicts
    provisional = ScanCalibration("input_gradient_coherence_ratio", 0.0)
    rows = []
    for cell in cells:
        if cell["name"] not in done:
            done[cell["name"]] = scan_cell(cell, clean, provisional, args.max_clips)
            with open(results, "a") as handle:
                handle.write(json.dumps(done[cell["name"]]) + "\n")
            print(f"scanned {cell['name']}: {done[cell['name']]['statistics']}", flush=True)
        rows.append(done[cell["name"]])
    if args.transfer:
        transfer_report(
            rows,
            ScanCalibration.shipped(),
            out,
            # --report_only re-reads the same scans, so the command that made them is the one to record
            " ".join(
                ["python benchmarks/scan_validation.py", *(a for a in sys.argv[1:] if a != "--report_only")]
            ),
        )
        return
    report = evaluate(rows, args.calibration_seeds, args.calibration_clean_seeds)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    command = "python benchmarks/scan_validation.py"
    write_report(rows, report, out, command)
    chosen = report["chosen"]
    calibration = ScanCalibration(
        statistic=chosen["statistic"],
        threshold=chosen["shipped_threshold"],
        source=(f"{command}: {report['models']['backdoored']} backdoored and {report['models']['clean']} clean "
                f"{'/'.join(sorted({r['model'] for r in rows}))} models on the synthetic keyword corpus, "
                f"{args.max_clips} clean validation clips each; {machine_description()}"),
        auroc=report["statistics"][chosen["statistic"]]["auroc"],
        false_positive_rate=chosen["false_positive_rate"],
        detection_rate=chosen["detection_rate"],
        extra={"held_out_auroc": chosen["held_out_auroc"],
               "held_out_detection_rate": chosen["held_out_detection_rate"],
               "held_out_false_positive_rate": chosen["held_out_false_positive_rate"]},
    )  # fmt: skip
    atomic_write_text(HERE.parent / "hf_gnft" / "analysis" / CALIBRATION_FILE,
                      json.dumps(calibration.to_dict(), indent=2) + "\n")  # fmt: skip
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
