"""GN-FT against plain fine-tuning on backdoored tiny models: a settings sweep (`make sweep-gnft`).

For each backdoored model (trained here with the default attack recipe when missing: tiny Wav2Vec2 and
HuBERT × noise-burst and tone triggers), each defense setting and each seed, `run_defense` fine-tunes on
a 5% clean subset of the training split and records CA / ASR / RA / DER and the clean validation
accuracy. Settings (`DEFENSES`): plain FT, a compute-matched FT (twice the epochs, about GN-FT's wall time),
GN-FT with global and per-tensor normalisation, larger radius, α = 1, a penalty warm-up, fewer epochs, and
AdamW instead of SGD (momentum 0.9); each at its optimiser's learning-rate grid. `make sweep-gnft` runs the
stages behind docs/gnft.md (3 seeds; one-seed screens of the variants; the promising ones with 3 seeds).

The defender's choice uses clean validation data only (`hf_gnft.choose_learning_rate`): per model and
defense, the largest learning rate whose mean validation accuracy drops by at most 2 points. Writes
`benchmarks/results/sweep_gnft.jsonl`
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

from hf_gnft.attack import METRICS_FILE, AttackArguments, ModelArguments, run_attack
from hf_gnft.benchmark import decorate_ca_asr_axis
from hf_gnft.data.arguments import CleanDataArguments, DataArguments
from hf_gnft.defenses import DefenseConfig, FTConfig
from hf_gnft.pipeline import SuspectModelArguments, choose_learning_rate, run_defense, validation_drop
from hf_gnft.trainer_args import KeywordTrainingArguments
from hf_gnft.triggers import NoiseBurst, Tone

HERE = Path(__file__).resolve().parent
TRIGGERS = {"noise_burst": NoiseBurst().to_dict(), "tone": Tone().to_dict()}
SGD_LRS = (0.05, 0.1)
ADAMW_LRS = (0.003, 0.006)
ADAMW = {"optim": "adamw_torch", "optim_args": None, "weight_decay": 0.01}
# name -> (DefenseConfig overrides, learning-rate grid). "FT 2x epochs" is the compute-matched control: GN-FT
# does two passes per step, so twice the epochs of FT take about its wall time (see `train s`).
DEFENSES: dict[str, tuple[dict, tuple[float, ...]]] = {
    "FT": ({"gn_alpha": 0.0}, SGD_LRS),
    "FT 2x epochs": ({"gn_alpha": 0.0, "num_train_epochs": 40.0}, SGD_LRS),
    "GN-FT global": ({"gn_alpha": 0.7, "gn_radius": 0.05, "gn_norm": "global"}, SGD_LRS),
    "GN-FT per-tensor": ({"gn_alpha": 0.7, "gn_radius": 0.05, "gn_norm": "per_tensor"}, SGD_LRS),
    # the second sweep: radius, α, penalty warm-up, epochs, and AdamW instead of SGD
    "GN-FT global r=0.2": ({"gn_radius": 0.2}, SGD_LRS),
    "GN-FT global r=0.5": ({"gn_radius": 0.5}, SGD_LRS),
    "GN-FT global r=0.2 alpha=1": ({"gn_radius": 0.2, "gn_alpha": 1.0}, SGD_LRS),
    "GN-FT global r=0.2 warm-up": ({"gn_radius": 0.2, "gn_warmup_steps": 0.25}, SGD_LRS),
    "GN-FT global 10 epochs": ({"num_train_epochs": 10.0}, SGD_LRS),
    "FT AdamW": ({"gn_alpha": 0.0, **ADAMW}, ADAMW_LRS),
    "FT AdamW 2x epochs": ({"gn_alpha": 0.0, "num_train_epochs": 40.0, **ADAMW}, ADAMW_LRS),
    "GN-FT AdamW global": (dict(ADAMW), ADAMW_LRS),
    "GN-FT AdamW global r=0.2": ({"gn_radius": 0.2, **ADAMW}, ADAMW_LRS),
}
FIRST_SWEEP = ["FT", "FT 2x epochs", "GN-FT global", "GN-FT per-tensor"]


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
        (FTConfig if DEFENSES[defense][0].get("gn_alpha") == 0 else DefenseConfig)(  # α = 0: the `ft` defense
            output_dir=str(
                output_dir / "cleaned" / f"{model_dir.name}-{defense.replace(' ', '_')}-{lr}-{seed}"
            ),
            learning_rate=lr,
            seed=seed,
            disable_tqdm=True,
            **DEFENSES[defense][0],
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


def choose(groups: dict[tuple, list[dict]], min_runs: int = 1) -> dict[tuple, tuple[float, list[dict]]]:
    """(suspect, defense) -> (lr, runs) chosen by `choose_learning_rate` (clean validation accuracy only)."""
    drops: dict[tuple, dict[float, list[float]]] = {}
    for (name, defense, lr), cell in groups.items():
        drops.setdefault((name, defense), {})[lr] = [validation_drop(r) for r in cell]
    chosen = {}
    for key, by_lr in drops.items():
        lr = choose_learning_rate(by_lr, max_drop=0.02, min_runs=min_runs)
        if lr is not None:
            chosen[key] = (lr, groups[(*key, lr)])
    return chosen


def summarise(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["suspect"], row["defense"], row["learning_rate"]), []).append(row)
    lines = [
        "| suspect | defense | lr | seeds | val. acc. drop pp | CA % | ASR % | RA % | DER | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    chosen = choose(groups)
    for (name, defense, lr), cell in sorted(groups.items()):
        drop = statistics.mean(validation_drop(r) for r in cell)
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
    return "\n".join(lines + ["", head_to_head(groups, choose(groups, min_runs=3))])


def head_to_head(groups: dict[tuple, list[dict]], chosen: dict[tuple, tuple]) -> str:
    """Defenses (rows) × suspects (columns) at the lr chosen among those run with at least 3 seeds: test
    CA / ASR %, seed means. "—": no such lr kept the validation drop within 2 points."""
    suspects = sorted({name for name, _, _ in groups})
    defenses = [d for d in DEFENSES if any(key[1] == d and len(cell) >= 3 for key, cell in groups.items())]
    lines = [
        "Head to head at the chosen lr (test CA / ASR %, mean of 3 seeds; lr in brackets):",
        "",
        "| defense | " + " | ".join(suspects) + " |",
        "|---|" + "---|" * len(suspects),
    ]
    befores = [next(c[0]["before"] for k, c in groups.items() if k[0] == name) for name in suspects]
    pct = lambda value: f"{100 * value:.1f}"  # noqa: E731
    lines.append(
        "| backdoored | "
        + " | ".join(f"{pct(b['clean_accuracy'])} / {pct(b['attack_success_rate'])}" for b in befores)
        + " |"
    )
    for defense in defenses:
        cells = []
        for name in suspects:
            if (name, defense) not in chosen:
                cells.append("—")
                continue
            lr, runs = chosen[(name, defense)]
            ca = statistics.mean(r["after"]["clean_accuracy"] for r in runs)
            asr = statistics.mean(r["after"]["attack_success_rate"] for r in runs)
            cells.append(f"{pct(ca)} / {pct(asr)} ({lr})")
        lines.append(f"| {defense} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """CA vs ASR: one panel per suspect and optimiser; per defense, the seed mean at each learning rate
    (joined by a line in lr order, error bars = std over seeds) and each run as a faint dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suspects = sorted({row["suspect"] for row in rows})
    optimisers = sorted({row["optim"]["optim"] for row in rows}, key=lambda name: name != "sgd")
    figure, axes = plt.subplots(
        len(optimisers), len(suspects), figsize=(4.6 * len(suspects), 4.2 * len(optimisers)), squeeze=False
    )
    colours = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(DEFENSES)}
    markers = {name: "os^vDP*Xhp<>d"[i % 13] for i, name in enumerate(DEFENSES)}
    for axes_row, optimiser in zip(axes, optimisers, strict=True):
        for axis, name in zip(axes_row, suspects, strict=True):
            subset = [r for r in rows if r["suspect"] == name and r["optim"]["optim"] == optimiser]
            if not subset:
                axis.set_visible(False)
                continue
            before = subset[0]["before"]
            axis.scatter([100 * before["attack_success_rate"]], [100 * before["clean_accuracy"]], c="k",
                         marker="*", s=140, label="backdoored", zorder=3)  # fmt: skip
            for defense in DEFENSES:
                runs = [r for r in subset if r["defense"] == defense]
                if not runs:
                    continue
                asr = [100 * r["after"]["attack_success_rate"] for r in runs]
                ca = [100 * r["after"]["clean_accuracy"] for r in runs]
                axis.scatter(asr, ca, color=colours[defense], marker=markers[defense], alpha=0.2, s=14)
                lrs = sorted({r["learning_rate"] for r in runs})
                by_lr = [[r for r in runs if r["learning_rate"] == lr] for lr in lrs]
                mean_asr = [
                    statistics.mean(100 * r["after"]["attack_success_rate"] for r in c) for c in by_lr
                ]
                mean_ca = [statistics.mean(100 * r["after"]["clean_accuracy"] for r in c) for c in by_lr]
                std = [
                    statistics.stdev([100 * r["after"]["attack_success_rate"] for r in c])
                    if len(c) > 1
                    else 0.0
                    for c in by_lr
                ]
                axis.errorbar(mean_asr, mean_ca, xerr=std, color=colours[defense], marker=markers[defense],
                              markersize=6, linewidth=1.2, capsize=2, label=defense)  # fmt: skip
            decorate_ca_asr_axis(axis, f"{name} ({optimiser})", before["clean_accuracy"], target_asr=10.0)
        axes_row[0].legend(fontsize=7, loc="lower left")
    figure.suptitle("GN-FT vs FT: seed means per learning rate (lines join lrs); dotted: target ASR 10%, CA − 2 pp",
                    fontsize=10)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="outputs/sweep_gnft")
    parser.add_argument("--models", nargs="+", default=["tiny-wav2vec2", "tiny-hubert"])
    parser.add_argument("--triggers", nargs="+", default=list(TRIGGERS))
    parser.add_argument("--defenses", nargs="+", default=list(DEFENSES), choices=list(DEFENSES))
    parser.add_argument(
        "--learning_rates", nargs="+", type=float, default=None,
        help="Override every defense's learning-rate grid (SGD 0.05 0.1, AdamW 0.003 0.006).",
    )  # fmt: skip
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
            for defense in args.defenses:
                for lr in args.learning_rates or DEFENSES[defense][1]:
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
