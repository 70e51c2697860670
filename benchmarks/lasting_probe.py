"""One-seed probe of lasting (issue 26): a defense on one suspect, then the relapse and retuning checks.

For a suspect folder written by `hf-gnft attack` (with its `attack_spec.json`; `make demo` writes one to
`outputs/demo/backdoored`): the 5% clean subset of the synthetic corpus (`--seed`), the defense (`purify` with the
settings given, or the evaluation-only `oracle-ep`: unlearning with the TRUE trigger), then CA / ASR on the full test
split, clean validation accuracy, the relapse check (clean fine-tunes at lr 0.01 and 0.05, with a re-inversion after
each) and the retuning check. One JSON line per run is appended to `--output` (default
`benchmarks/lasting/probe.jsonl`). Not a benchmark (one seed, no knob search): `hf-gnft benchmark` is.

    python benchmarks/lasting_probe.py outputs/demo/backdoored --defense oracle-ep --settings '{"learning_rate": 0.05}'
    python benchmarks/lasting_probe.py outputs/demo/backdoored --settings '{"purify_shapes": ["burst"]}'
    python benchmarks/lasting_probe.py outputs/demo/backdoored --settings '{"purify_shapes": ["burst"],
        "purify_burst_every_start": false}' --burst_start_s 0.05

`--ft_reference`: the FT defense (lr 0.01) is timed on the same clean subset after the defense, in the same process,
and the table's last column is the defense's wall time over FT's (the cost target: ≤ 5×).

`--burst_start_s`: a diagnosis only, never a defense: the burst surrogate is inverted at this one start (the
trigger's, which a defender does not know), to separate the surrogate's place from its shape.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import datasets
import torch
import transformers

import hf_gnft.inversion as inversion
from hf_gnft.data.arguments import CleanDataArguments, DataArguments
from hf_gnft.defenses import (
    ExactPurificationConfig,
    FTConfig,
    PurifyConfig,
    apply_exact_purification,
    apply_fine_tuning,
    apply_purify,
)
from hf_gnft.lasting import RelapseConfig, relapse_check
from hf_gnft.models import load_suspect_model
from hf_gnft.outputs import machine_description
from hf_gnft.poison import AttackSpec, make_triggered_eval_set
from hf_gnft.retuning import RetuningConfig, retuning_attack
from hf_gnft.training import evaluate_backdoor
from hf_gnft.triggers import trigger_from_config


def percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 1)


def describe_run(row: dict) -> str:
    """A row's defense and settings, as the table names it."""
    effective = row.get("effective") or {}
    shown = {key: effective.get(key, value) for key, value in row["settings"].items()}
    changed = (
        "purify_mix_ratio",
        "purify_repair_epochs",
        "purify_shapes",
        "purify_distillation",
        "purify_repair_distillation",
        "purify_distillation_hides_target",
        "purify_relearn_encoder_steps",
        "purify_relearn_encoder_crop_s",
    )  # what changed between the runs
    for key in changed:
        if key in effective:
            shown[key] = effective[key]
    settings = ", ".join(f"{key}={json.dumps(value)}" for key, value in shown.items()) or "defaults"
    place = (
        f", burst at {row['burst_start_s']:g} s (diagnosis)" if row.get("burst_start_s") is not None else ""
    )
    plan = ", ".join(family for _, family in row.get("plan") or [])
    suspect = (
        f" on {row['suspect']}" if row.get("suspect") not in (None, "backdoored") else ""
    )  # not make demo's
    variant = f"; {row['variant']}" if row.get("variant") else ""
    if row.get("clean_clips"):  # rows from before the field: the 5% subset (200 clips)
        variant += f"; {row['clean_clips']} clean clips"
    return f"{row['defense']}{suspect} ({settings}{place}){f'; unlearned: {plan}' if plan else ''}{variant}"


def time_ratio(row: dict) -> str:
    """The defense's wall time over FT's on the same clean subset in the same run (`--ft_reference`), or ''."""
    if not row.get("ft_seconds"):
        return ""
    return f"{row['defense_seconds'] / row['ft_seconds']:.1f} ({row['defense_seconds']:g} s / {row['ft_seconds']:g} s)"


def report(path: str) -> str:
    """The Markdown table of a probe file (one row per run, in order)."""
    lines = [
        "| run | seed | CA | ASR | validation | relapse lr 0.01: CA / ASR | relapse lr 0.05: CA / ASR | retuned ASR "
        "| time × ft |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for text in Path(path).read_text().splitlines():
        row = json.loads(text)
        before, after = row["before"], row["after"]
        relapse = [f"{run['clean_accuracy']} / {run['attack_success_rate']}" for run in row["relapse"]]
        lines.append(
            f"| {describe_run(row)} | {row['seed']} | {after['clean_accuracy']} | {after['attack_success_rate']} "
            f"| {after['validation_accuracy']} (suspect {before['validation_accuracy']}) | {' | '.join(relapse)} "
            f"| {row['retuned_asr']} | {time_ratio(row)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suspect", nargs="?")
    parser.add_argument("--report", action="store_true", help="print the table of --output and exit")
    parser.add_argument(
        "--positions", nargs="+", type=float, metavar="S",
        help="only measure the suspect's ASR with its own trigger moved to each start (seconds) and exit",
    )  # fmt: skip
    parser.add_argument("--defense", choices=("purify", "oracle-ep"), default="purify")
    parser.add_argument("--settings", type=json.loads, default={}, help="config fields as a JSON mapping")
    parser.add_argument("--seed", type=int, default=0, help="the clean subset's seed (and the defense's)")
    parser.add_argument(
        "--clean_fraction", type=float, default=0.05,
        help="the clean subset's share of the training split (the grid's 0.05; larger to see how cost scales)",
    )  # fmt: skip
    parser.add_argument("--burst_start_s", type=float, default=None, help="diagnosis only: see the docs")
    parser.add_argument("--output", default="benchmarks/lasting/probe.jsonl")
    parser.add_argument(
        "--ft_reference", action="store_true",
        help="also time the FT defense (lr 0.01, its defaults) on the same clean subset, for `time × ft`",
    )  # fmt: skip
    args = parser.parse_args()
    if args.report:
        print(report(args.output))
        return
    if args.suspect is None:
        parser.error("a suspect folder is needed (or --report)")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    if args.burst_start_s is not None:
        start = int(round(args.burst_start_s * 16_000))
        inversion.window_starts = lambda length, window, stride: [start]
    model, extractor = load_suspect_model(args.suspect)
    spec = AttackSpec.from_json(str(Path(args.suspect) / "attack_spec.json"))
    dataset = DataArguments().load(16_000)
    test, validation = dataset["test"], dataset["validation"]
    trigger, target = spec.build_trigger(), spec.target_label
    if args.positions:
        moved = {}
        for start in args.positions:
            shifted = trigger_from_config({**trigger.to_dict(), "position": start})
            triggered = make_triggered_eval_set(test, shifted, target)
            moved[f"{start:g}"] = percent(
                evaluate_backdoor(model, extractor, test, triggered, target).attack_success_rate
            )
        row = {"suspect": Path(args.suspect).name, "trigger": trigger.to_dict(), "asr_by_start_s": moved,
               "machine": machine_description()}  # fmt: skip
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).with_name("positions.json").write_text(json.dumps(row, indent=2) + "\n")
        print(json.dumps(row))
        return
    triggered = make_triggered_eval_set(test, trigger, target)
    clean = CleanDataArguments(clean_fraction=args.clean_fraction, clean_seed=args.seed).select(
        dataset["train"]
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        common = {"output_dir": scratch, "seed": args.seed, "disable_tqdm": True, "report_to": "none"}
        if args.defense == "oracle-ep":
            config = ExactPurificationConfig(oracle_trigger=trigger.to_dict(), oracle_target=target, **common,
                                             **args.settings)  # fmt: skip
            outcome = apply_exact_purification(model, extractor, clean, config)
        else:
            config = PurifyConfig(**common, **args.settings)
            outcome = apply_purify(model, extractor, clean, config, validation=validation)
    defense_seconds = time.perf_counter() - started
    ft_seconds = None
    if args.ft_reference:  # the cost target's reference, timed in the same process
        with tempfile.TemporaryDirectory() as scratch:
            ft_started = time.perf_counter()
            apply_fine_tuning(model, extractor, clean, FTConfig(output_dir=scratch, seed=args.seed,
                              disable_tqdm=True, report_to="none"))  # fmt: skip
            ft_seconds = time.perf_counter() - ft_started
    defended = outcome.model
    before = evaluate_backdoor(model, extractor, test, triggered, target)
    after = evaluate_backdoor(defended, extractor, test, triggered, target)
    relapse = relapse_check(defended, extractor, clean, test=test, triggered=triggered, target=target, suspect=model,
                            clips=validation, config=RelapseConfig(seed=args.seed))  # fmt: skip
    retuned = retuning_attack(defended, extractor, clean, trigger, target, test, triggered,
                              RetuningConfig(seed=args.seed))  # fmt: skip
    row = {
        "suspect": Path(args.suspect).name,
        "defense": args.defense,
        "settings": args.settings,
        "burst_start_s": args.burst_start_s,
        "seed": args.seed,
        "clean_clips": len(clean),
        "before": {"clean_accuracy": percent(before.clean_accuracy), "attack_success_rate":
                   percent(before.attack_success_rate),
                   "validation_accuracy": percent(evaluate_backdoor(model, extractor, validation).clean_accuracy)},
        "after": {"clean_accuracy": percent(after.clean_accuracy), "attack_success_rate":
                  percent(after.attack_success_rate),
                  "validation_accuracy": percent(evaluate_backdoor(defended, extractor, validation).clean_accuracy)},
        "relapse": [{"learning_rate": run["learning_rate"], "clean_accuracy": percent(run["clean_accuracy"]),
                     "attack_success_rate": percent(run["attack_success_rate"]),
                     "reinversion": percent(run["reinversion"])} for run in relapse["runs"]],
        "retuned_asr": percent(retuned.metrics.attack_success_rate),
        "effective": {key: value for key, value in vars(config).items()
                      if key.startswith("purify_") or key in ("learning_rate", "num_train_epochs")},
        "plan": outcome.info.get("plan"),
        "shapes": outcome.info.get("shapes"),
        "defense_seconds": round(defense_seconds, 1),
        "stage_seconds": outcome.info.get("seconds"),
        "ft_seconds": None if ft_seconds is None else round(ft_seconds, 1),
        "machine": machine_description(),
    }  # fmt: skip
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
