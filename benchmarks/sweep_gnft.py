"""GN-FT against plain fine-tuning on backdoored tiny models: a settings sweep (`make sweep-gnft`).

For each backdoored model (trained here with the default attack recipe when missing: tiny Wav2Vec2 and
HuBERT × noise-burst and tone triggers), each defense setting and each seed, `run_defense` fine-tunes on
a 5% clean subset of the training split and records CA / ASR / RA / DER and the clean validation
accuracy. Settings: plain FT, a compute-matched FT (twice the epochs, about GN-FT's wall time), GN-FT
with global and per-tensor normalisation; each at several learning rates (SGD, momentum 0.9).

The defender's choice uses clean validation data only: per model and defense, the largest learning rate
whose mean validation accuracy drops by at most 2 points. Writes `benchmarks/results/sweep_gnft.jsonl`
(resumable: finished cells are not redone), `benchmarks/sweep_gnft.md` and `benchmarks/sweep_gnft.png`
(CA vs ASR over the whole sweep).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import torch

from hf_gnft.attack import METRICS_FILE, AttackArguments, DataArguments, ModelArguments, run_attack
from hf_gnft.defense import CleanDataArguments, DefenseConfig, SuspectModelArguments, run_defense
from hf_gnft.trainer_args import KeywordTrainingArguments
from hf_gnft.triggers import NoiseBurst, Tone

HERE = Path(__file__).resolve().parent
TRIGGERS = {"noise_burst": NoiseBurst().to_dict(), "tone": Tone().to_dict()}
DEFENSES = {  # name -> DefenseConfig overrides
    "FT": {"gn_alpha": 0.0},
    "FT 2x epochs": {"gn_alpha": 0.0, "num_train_epochs": 40.0},
    "GN-FT global": {"gn_alpha": 0.7, "gn_radius": 0.05, "gn_norm": "global"},
    "GN-FT per-tensor": {"gn_alpha": 0.7, "gn_radius": 0.05, "gn_norm": "per_tensor"},
}


def suspect(output_dir: Path, model: str, trigger: str) -> Path:
    path = output_dir / "suspects" / f"{model}-{trigger}"
    if not (path / METRICS_FILE).exists():
        print(f"training the backdoored {model} ({trigger}) ...", flush=True)
        run_attack(
            DataArguments(),
            AttackArguments(trigger=json.dumps(TRIGGERS[trigger])),
            ModelArguments(model=model),
            KeywordTrainingArguments(output_dir=str(path), seed=42, disable_tqdm=True),
        )
    return path


def run_cell(output_dir: Path, model_dir: Path, defense: str, lr: float, seed: int) -> dict:
    result = run_defense(
        DataArguments(),
        CleanDataArguments(clean_seed=seed),
        SuspectModelArguments(model=str(model_dir)),
        DefenseConfig(
            output_dir=str(
                output_dir / "cleaned" / f"{model_dir.name}-{defense.replace(' ', '_')}-{lr}-{seed}"
            ),
            learning_rate=lr,
            seed=seed,
            disable_tqdm=True,
            **DEFENSES[defense],
        ),
    )
    record = result.record
    return {
        "suspect": model_dir.name,
        "defense": defense,
        "learning_rate": lr,
        "seed": seed,
        "before": record["before"],
        "after": record["after"],
        "der": record["der"],
        "validation_accuracy": record["validation_accuracy"],
        "train_seconds": record["train_seconds"],
        "gn": record["gn"],
        "optim": record["optim"],
    }


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def summarise(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["suspect"], row["defense"], row["learning_rate"]), []).append(row)
    lines = [
        "| suspect | defense | lr | seeds | val. acc. drop pp | CA % | ASR % | RA % | DER | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    chosen: dict[tuple, tuple] = {}
    for (name, defense, lr), cell in sorted(groups.items()):
        drop = statistics.mean(
            r["validation_accuracy"]["before"] - r["validation_accuracy"]["after"] for r in cell
        )
        if drop <= 0.02 and lr >= chosen.get((name, defense), (0.0,))[0]:
            chosen[(name, defense)] = (lr, cell)
        lines.append(
            f"| {name} | {defense} | {lr} | {len(cell)} | {100 * drop:.1f} "
            f"| {mean_std([r['after']['clean_accuracy'] for r in cell])} "
            f"| {mean_std([r['after']['attack_success_rate'] for r in cell])} "
            f"| {mean_std([r['after']['robust_accuracy'] for r in cell])} "
            f"| {statistics.mean(r['der'] for r in cell):.3f} "
            f"| {statistics.mean(r['train_seconds'] for r in cell):.1f} |"
        )
    lines += ["", "Chosen by clean validation accuracy (largest lr with a drop ≤ 2 pp):", ""]
    lines += [
        "| suspect | before CA / ASR % | defense | lr | CA % | ASR % | DER |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, defense), (lr, cell) in sorted(chosen.items()):
        before = cell[0]["before"]
        lines.append(
            f"| {name} | {100 * before['clean_accuracy']:.1f} / {100 * before['attack_success_rate']:.1f} "
            f"| {defense} | {lr} | {mean_std([r['after']['clean_accuracy'] for r in cell])} "
            f"| {mean_std([r['after']['attack_success_rate'] for r in cell])} "
            f"| {statistics.mean(r['der'] for r in cell):.3f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suspects = sorted({row["suspect"] for row in rows})
    figure, axes = plt.subplots(1, len(suspects), figsize=(5 * len(suspects), 4.2), squeeze=False)
    markers = dict(zip(DEFENSES, "os^v", strict=False))
    for axis, name in zip(axes[0], suspects, strict=True):
        subset = [row for row in rows if row["suspect"] == name]
        before = subset[0]["before"]
        axis.scatter([100 * before["attack_success_rate"]], [100 * before["clean_accuracy"]], c="k", marker="*", s=120,
                     label="backdoored")  # fmt: skip
        for defense in DEFENSES:
            points = [row for row in subset if row["defense"] == defense]
            if points:
                axis.scatter(
                    [100 * r["after"]["attack_success_rate"] for r in points],
                    [100 * r["after"]["clean_accuracy"] for r in points],
                    marker=markers[defense], alpha=0.7, label=defense,
                )  # fmt: skip
        axis.set_title(name)
        axis.set_xlabel("ASR % (lower is better)")
        axis.set_ylabel("CA % (higher is better)")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="outputs/sweep_gnft")
    parser.add_argument("--models", nargs="+", default=["tiny-wav2vec2", "tiny-hubert"])
    parser.add_argument("--triggers", nargs="+", default=list(TRIGGERS))
    parser.add_argument("--defenses", nargs="+", default=list(DEFENSES))
    parser.add_argument("--learning_rates", nargs="+", type=float, default=[0.05, 0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--results", default=str(HERE / "results" / "sweep_gnft.jsonl"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    output_dir, results = Path(args.output_dir), Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    done = {(r["suspect"], r["defense"], r["learning_rate"], r["seed"]) for r in rows}
    for model in args.models:
        for trigger in args.triggers:
            model_dir = suspect(output_dir, model, trigger)
            for lr in args.learning_rates:
                for defense in args.defenses:
                    for seed in args.seeds:
                        if (model_dir.name, defense, lr, seed) in done:
                            continue
                        row = run_cell(output_dir, model_dir, defense, lr, seed)
                        rows.append(row)
                        with open(results, "a") as handle:
                            handle.write(json.dumps(row) + "\n")
                        after = row["after"]
                        print(
                            f"{model_dir.name} {defense} lr={lr} seed={seed}: CA {100 * after['clean_accuracy']:.1f} "
                            f"ASR {100 * after['attack_success_rate']:.1f} ({row['train_seconds']:.0f} s)",
                            flush=True,
                        )
    table = summarise(rows)
    command = "make sweep-gnft` (`python benchmarks/sweep_gnft.py`)"
    (HERE / "sweep_gnft.md").write_text(f"{table}\n\nCommand: `{command}, on x86_64 with 2 CPU cores.\n")
    plot(rows, HERE / "sweep_gnft.png")
    print(table)


if __name__ == "__main__":
    main()
