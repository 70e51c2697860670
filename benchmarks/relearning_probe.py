"""Probe of purify's encoder re-learning alone (issue 26): cost against fidelity, one suspect, one seed.

For a suspect folder written by `hf-gnft attack` (with its `attack_spec.json`), the 5% clean subset of the synthetic
corpus (`--seed`) and each setting given: a copy of the suspect whose convolutional feature encoder is re-learned
from the suspect's encoder outputs on the clean clips ([`hf_gnft.defenses.encoder_relearning`]), nothing else
changed; then its seconds, the relative error of the new encoder on the clean validation clips (whole clips, not
mixed: held out from the re-learning), and the model's validation accuracy, CA and ASR. Nothing is unlearned: this
measures what the re-learning alone keeps and costs. One JSON line per setting is appended to `--output`.

    python benchmarks/relearning_probe.py outputs/sweep_gnft/suspects/tiny-wav2vec2-noise_burst \\
        --settings '{"steps": 1500, "learning_rate": 0.005}' '{"steps": 1500, "learning_rate": 0.005, "crop": 4000}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import torch
import transformers

from hf_gnft.data.arguments import CleanDataArguments, DataArguments
from hf_gnft.defenses.base import copy_model
from hf_gnft.defenses.encoder_relearning import encoder_error, relearn_feature_encoder
from hf_gnft.inversion import model_input
from hf_gnft.models import load_suspect_model
from hf_gnft.outputs import machine_description
from hf_gnft.poison import AttackSpec, make_triggered_eval_set
from hf_gnft.training import audio_batches, evaluate_backdoor


def report(path: str) -> str:
    """The Markdown table of a probe file (one row per run, in order)."""
    lines = [
        "| settings | seed | seconds | relative error: last tenth of the steps | on whole validation clips "
        "| validation | CA | ASR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for text in Path(path).read_text().splitlines():
        row = json.loads(text)
        settings = ", ".join(f"{key}={value}" for key, value in row["settings"].items())
        lines.append(
            f"| {settings} | {row['seed']} | {row['seconds']:.0f} | {row['error_end']} | {row['held_out_error']} "
            f"| {row['validation_accuracy']} | {row['clean_accuracy']} | {row['attack_success_rate']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suspect", nargs="?")
    parser.add_argument("--report", action="store_true", help="print the table of --output and exit")
    parser.add_argument("--settings", nargs="+", type=json.loads,
                        help="keyword arguments of relearn_feature_encoder, one JSON mapping per run")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="the clean subset's seed (and the re-learning's)")
    parser.add_argument("--output", default="benchmarks/lasting/relearning.jsonl")
    args = parser.parse_args()
    if args.report:
        print(report(args.output))
        return
    if args.suspect is None or not args.settings:
        parser.error("a suspect folder and --settings are needed (or --report)")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    model, extractor = load_suspect_model(args.suspect)
    spec = AttackSpec.from_json(str(Path(args.suspect) / "attack_spec.json"))
    dataset = DataArguments().load(16_000)
    test, validation = dataset["test"], dataset["validation"]
    triggered = make_triggered_eval_set(test, spec.build_trigger(), spec.target_label)
    clean = CleanDataArguments(clean_fraction=0.05, clean_seed=args.seed).select(dataset["train"])
    batching, normalize, _ = model_input(model, extractor)
    batches = list(audio_batches(clean, extractor, 32, **batching))
    held_out = list(audio_batches(validation, extractor, 64, **batching))
    for settings in args.settings:
        student = copy_model(model)
        record = relearn_feature_encoder(
            student, model, batches, normalize=normalize, seed=args.seed, **settings
        )
        student.eval()
        after = evaluate_backdoor(student, extractor, test, triggered, spec.target_label)
        row = {
            "suspect": Path(args.suspect).name,
            "seed": args.seed,
            "settings": settings,
            "seconds": record["seconds"],
            "error_end": record["error_end"],
            "held_out_error": round(encoder_error(student, model, held_out), 4),
            "validation_accuracy": round(
                100 * evaluate_backdoor(student, extractor, validation).clean_accuracy, 1
            ),
            "clean_accuracy": round(100 * after.clean_accuracy, 1),
            "attack_success_rate": round(100 * after.attack_success_rate, 1),
            "machine": machine_description(),
        }
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
