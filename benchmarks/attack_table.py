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

import numpy as np
import torch

from hf_gnft.attack import METRICS_FILE, AttackArguments, DataArguments, ModelArguments, run_attack
from hf_gnft.trainer_args import KeywordTrainingArguments
from hf_gnft.triggers import PBSM, ClipOverlay, NoiseBurst, StyleTrigger, Tone

HERE = Path(__file__).resolve().parent


def jingle(sampling_rate: int = 16_000, seconds: float = 0.3) -> list[float]:
    """A short three-note jingle (DABA-style music clip), generated so nothing is downloaded."""
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    notes = np.array([523.25, 659.25, 783.99])[np.minimum((3 * t / seconds).astype(int), 2)]
    clip = np.sin(2 * np.pi * notes * t) * np.exp(-((t * 3 / seconds) % 1) * 4)
    return [round(float(x), 6) for x in 0.5 * clip]


def triggers() -> dict[str, dict]:
    return {
        "noise_burst": NoiseBurst().to_dict(),
        "tone": Tone().to_dict(),
        "near_ultrasonic_tone": Tone.near_ultrasonic(16_000, bursts=5, duration_s=0.3).to_dict(),
        "pbsm": PBSM().to_dict(),
        "style": StyleTrigger.preset("pitch_distortion_chorus").to_dict(),
        "clip_overlay": ClipOverlay(array=jingle(), array_sampling_rate=16_000, level_db=-20.0).to_dict(),
    }


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
