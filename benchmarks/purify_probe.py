"""One-seed probe of purification against FT on backdoored suspects (the numbers behind purify's defaults).

For each suspect folder (written by `hf-gnft attack`, with its `attack_spec.json`): the 5% clean subset of the
synthetic corpus (seed 0), FT at `--ft_learning_rate` and purification with its defaults (or the settings given),
CA and ASR on `--test_clips` test clips, clean validation accuracy, wall time. Not a benchmark (one seed, no knob
search): the small-grid benchmark is `recipes/benchmark.py`.

    python benchmarks/purify_probe.py outputs/sweep_gnft/suspects/tiny-wav2vec2-{noise_burst,tone,pbsm,style}
    python benchmarks/purify_probe.py SUSPECT --purify learning_rate=0.02 purify_families=additive
    python benchmarks/purify_probe.py SUSPECT --purify learning_rate=0.01 --interpolation_path 0.5 0.75 0.9 1

`--interpolation_path`: after purifying, CA / ASR (val) at each w of θ_suspect + w · (θ_purified − θ_suspect) and the
success of a fresh inversion of each suspected target there (what `purify_interpolation_step` walks on).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import datasets
import transformers

from hf_gnft.data.arguments import CleanDataArguments, DataArguments
from hf_gnft.defenses import FTConfig, PurifyConfig, apply_fine_tuning, apply_purify
from hf_gnft.defenses.purify import interpolate_weights
from hf_gnft.inversion import class_batches, invert, model_input
from hf_gnft.models import load_suspect_model
from hf_gnft.outputs import machine_description
from hf_gnft.poison import AttackSpec, make_triggered_eval_set
from hf_gnft.training import evaluate_backdoor


def setting(text: str) -> tuple[str, object]:
    key, value = text.split("=", 1)
    if key == "purify_families":
        return key, value.split(",")
    return key, json.loads(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suspects", nargs="+")
    parser.add_argument("--ft_learning_rate", type=float, default=0.05)
    parser.add_argument(
        "--purify", nargs="*", default=[], type=setting, help="KEY=VALUE PurifyConfig settings"
    )
    parser.add_argument("--test_clips", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interpolation_path", nargs="*", type=float, default=[], metavar="W")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    dataset = DataArguments().load(16_000)
    clean = CleanDataArguments(clean_fraction=0.05, clean_seed=args.seed).select(dataset["train"])
    test = dataset["test"].shuffle(seed=0).select(range(args.test_clips))
    validation = dataset["validation"]
    common = dict(output_dir="outputs/purify_probe", report_to="none", disable_tqdm=True, seed=args.seed)
    print(f"machine: {machine_description()}; {len(clean)} clean clips, {len(test)} test clips")
    print(
        "| suspect | before CA / ASR % (val) | FT CA / ASR % (val) | purify CA / ASR % (val) | FT s | purify s | targets |"
    )
    print("|---|---|---|---|---|---|---|")
    for path in args.suspects:
        model, extractor = load_suspect_model(path)
        spec = AttackSpec.from_json(f"{path}/attack_spec.json")
        triggered = make_triggered_eval_set(test, spec.build_trigger(), spec.target_label)

        def measure(candidate, extractor=extractor, triggered=triggered, target=spec.target_label) -> str:
            metrics = evaluate_backdoor(candidate, extractor, test, triggered, target)
            val = evaluate_backdoor(candidate, extractor, validation).clean_accuracy
            return f"{100 * metrics.clean_accuracy:.1f} / {100 * metrics.attack_success_rate:.1f} ({100 * val:.1f})"

        started = time.perf_counter()
        ft = apply_fine_tuning(
            model, extractor, clean, FTConfig(learning_rate=args.ft_learning_rate, **common)
        )
        ft_seconds = time.perf_counter() - started
        started = time.perf_counter()
        purified = apply_purify(
            model, extractor, clean, PurifyConfig(**{**common, **dict(args.purify)}), validation=validation
        )
        purify_seconds = time.perf_counter() - started
        print(f"| {path.rstrip('/').split('/')[-1]} | {measure(model)} | {measure(ft.model)} | {measure(purified.model)} "
              f"| {ft_seconds:.0f} | {purify_seconds:.0f} | {purified.info['targets']} |", flush=True)  # fmt: skip
        if args.interpolation_path:
            walk(model, purified, extractor, PurifyConfig(**{**common, **dict(args.purify)}), validation,
                 args.interpolation_path, measure)  # fmt: skip


def walk(model, purified, extractor, config, validation, weights, measure) -> None:
    """CA / ASR (val) and the fresh inversions' success (held-out validation clips, the rounds' settings) at each
    weight w on the line from the suspect (0) to the purified model (1)."""
    batching, normalize, rate = model_input(model, extractor)
    clips = validation.shuffle(seed=config.seed).select(
        range(min(config.purify_inversion_clips, len(validation)))
    )
    batches = {t: class_batches(clips, extractor, t, config.per_device_train_batch_size, **batching)
               for t in purified.info["targets"]}  # fmt: skip
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    end = {k: v.detach().clone() for k, v in purified.model.state_dict().items()}
    point = copy.deepcopy(model)
    for weight in weights:
        interpolate_weights(point, start, end, weight)
        point.eval()
        found = {f"{family}->{target}": invert(point, batches[target], target, family, config.inversion_settings(),
                                               normalize=normalize, sampling_rate=rate).success
                 for target, family in purified.info["plan"]}  # fmt: skip
        print(f"|   w {weight:g} | {measure(point)} | inversion " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in
                                                                           found.items()) + " |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
