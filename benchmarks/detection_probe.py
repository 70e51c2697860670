"""Diagnosis of purify's detection on one suspect: which part of its trigger the suspect answers, and how far each
inversion family reaches each class (not a benchmark: the attack's own trigger is used, so nothing here may choose
a setting).

For a model folder (written by `hf-gnft attack` or a benchmark grid; with its `attack_spec.json`, if any): the
attack success of the suspect's trigger on `--test_clips` test clips, and of its parts where the trigger has parts
(PBSM: the pitch shift alone, the click alone); then, for each class of `--classes`, the held-out success of each
family of `--families` at purify's rounds' settings on 128 validation clips (seed 0), as purify's refinement and
shapes measure it. The family `spectral+burst` is the spectral family's pitch shift followed by a burst at every
start (no such family exists in purify: it asks whether one would separate the target). On a model trained without
poisoning, the same rows say how far each family reaches a class where there is no backdoor.

    python benchmarks/detection_probe.py benchmarks/lasting-1000/suspects/tiny-wav2vec2-pbsm \\
        --families spectral burst spectral+burst
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import datasets
import torch

from hf_gnft.data.arguments import DataArguments
from hf_gnft.defenses import PurifyConfig
from hf_gnft.inversion import class_batches, invert, model_input, normalise, pitch_shifted
from hf_gnft.models import load_suspect_model
from hf_gnft.poison import AttackSpec, make_triggered_eval_set
from hf_gnft.training import evaluate_backdoor
from hf_gnft.triggers.pbsm import PBSM


def trigger_parts(trigger) -> dict[str, object]:
    """The trigger and, for PBSM, its pitch shift alone and its click alone."""
    parts = {"trigger": trigger}
    if isinstance(trigger, PBSM):
        parts["pitch shift only"] = dataclasses.replace(trigger, level_db=-150.0)
        parts["click only"] = dataclasses.replace(trigger, semitones=0.0)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suspect")
    parser.add_argument("--families", nargs="+", default=["additive", "spectral", "burst"])
    parser.add_argument("--classes", type=int, nargs="*", default=None, help="default: every class")
    parser.add_argument("--test_clips", type=int, default=300)
    parser.add_argument("--level_db", type=float, default=None, help="the burst's level (default: purify's)")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    torch.manual_seed(0)
    dataset = DataArguments().load(16_000)
    model, extractor = load_suspect_model(args.suspect)
    spec_path = Path(args.suspect) / "attack_spec.json"  # absent on a model trained without poisoning
    spec = AttackSpec.from_json(str(spec_path)) if spec_path.exists() else None
    test = dataset["test"].shuffle(seed=0).select(range(args.test_clips))
    for name, trigger in trigger_parts(spec.build_trigger()).items() if spec else []:
        triggered = make_triggered_eval_set(test, trigger, spec.target_label)
        success = evaluate_backdoor(model, extractor, test, triggered, spec.target_label).attack_success_rate
        print(f"{name}: ASR {100 * success:.1f}% (target {spec.target_label})", flush=True)
    settings = PurifyConfig(output_dir="unused").inversion_settings()
    if args.level_db is not None:
        settings = dataclasses.replace(settings, level_db=args.level_db)
    batching, normalize, rate = model_input(model, extractor)
    clips = dataset["validation"].shuffle(seed=0).select(range(128))
    classes = args.classes if args.classes is not None else range(model.config.num_labels)
    for target in classes:
        batches = class_batches(clips, extractor, target, 32, **batching)
        for family in args.families:
            started = time.perf_counter()
            if family == "spectral+burst":
                shift = invert(
                    model, batches, target, "spectral", settings, normalize=normalize, sampling_rate=rate
                )
                shifted = []
                for batch in batches:
                    values = pitch_shifted(batch["input_values"], shift.semitones, rate)
                    shifted.append({**batch, "input_values": normalise(values) if normalize else values})
                found = invert(
                    model, shifted, target, "burst", settings, normalize=normalize, sampling_rate=rate
                )
                detail = f"shift {shift.semitones:+d}"
            else:
                found = invert(
                    model, batches, target, family, settings, normalize=normalize, sampling_rate=rate
                )
                detail = f"shift {found.semitones:+d}" if family == "spectral" else ""
            print(f"class {target} {family}: {100 * found.success:.1f}% {detail} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
