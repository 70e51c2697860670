"""GN-FT's observation on the benchmark's backdoored models, before and after GN-FT (`make observation`).

For each suspect of the small defense grid (trained once and cached, as `make bench-defenses` does):
clean it with GN-FT at the learning rate the benchmark chose on clean validation for it, then run the
neuron-gradient analysis (`recipes/analyze.py`) on the suspect against the cleaned model. Writes, per suspect,
`benchmarks/observation/<model>-<trigger>/` (analysis.json and the plots) and a summary table
`benchmarks/observation/results.md`: neurons per category, mean gradient per category on clean and triggered
clips, the ratio backdoor-related / clean, before and after GN-FT, and the ASR. Resumable: a finished suspect
is not redone.

    python benchmarks/observation.py                                   # noise burst, both models
    python benchmarks/observation.py --triggers noise_burst tone
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from hf_gnft.analysis import ANALYSIS_FILE, AnalysisArguments, run_analysis
from hf_gnft.attack import ATTACK_SPEC_FILE, METRICS_FILE, ModelArguments, run_clean_training
from hf_gnft.benchmark import Benchmark, BenchmarkConfig, choose_cells
from hf_gnft.data.arguments import CleanDataArguments, DataArguments
from hf_gnft.defenses.gnft_config import DefenseConfig
from hf_gnft.outputs import atomic_write_text, machine_description
from hf_gnft.pipeline import SuspectModelArguments, run_defense
from hf_gnft.trainer_args import KeywordTrainingArguments

HERE = Path(__file__).resolve().parent
GRID = HERE / "grids" / "small.yaml"


def chosen_learning_rate(model: str, trigger: str) -> float:
    """The GN-FT learning rate the small grid chose on clean validation for this suspect (0.1 if not run)."""
    config = BenchmarkConfig.from_yaml(GRID)
    results = HERE / "defenses" / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    chosen = choose_cells(rows, config).get((model, trigger, "gn-ft"))
    return float(chosen[0]) if chosen else 0.1


def clean_reference(model: str, config: BenchmarkConfig) -> Path:
    """The control: the model trained as the suspects are (same data, epochs and seed) without poisoning."""
    path = Path(config.suspects_dir) / f"{model}-clean"
    if not (path / METRICS_FILE).exists():
        print(f"training the clean {model} ...", flush=True)
        run_clean_training(
            DataArguments(),
            ModelArguments(model=model),
            KeywordTrainingArguments(output_dir=str(path), num_train_epochs=config.attack_epochs, seed=42,
                                     disable_tqdm=True, report_to="none"),
        )  # fmt: skip
    return path


def observe(model: str, trigger: str, out_root: Path, work: Path, max_samples: int) -> dict:
    config = BenchmarkConfig.from_yaml(GRID)
    suspect = Benchmark(config).suspect(model, trigger)
    name = f"{model}-{trigger}"
    cleaned = work / f"{name}-gnft"
    learning_rate = chosen_learning_rate(model, trigger)
    if not (cleaned / "defense_metrics.json").exists():
        run_defense(
            DataArguments(),
            CleanDataArguments(clean_seed=0),
            SuspectModelArguments(model=str(suspect)),
            DefenseConfig(output_dir=str(cleaned), learning_rate=learning_rate, seed=0, disable_tqdm=True,
                          overwrite_output_dir=True),
        )  # fmt: skip
    target = out_root / name
    if not (target / ANALYSIS_FILE).exists():
        run_analysis(
            DataArguments(),
            SuspectModelArguments(model=str(suspect)),
            AnalysisArguments(output_dir=str(target), cleaned_model=str(cleaned), max_samples=max_samples,
                              scan=False, overwrite_output_dir=True),
        )  # fmt: skip
    control = out_root / f"{name}-clean-control"
    if not (control / ANALYSIS_FILE).exists():
        run_analysis(
            DataArguments(),
            SuspectModelArguments(model=str(clean_reference(model, config)), attack_spec=str(suspect / ATTACK_SPEC_FILE)),
            AnalysisArguments(output_dir=str(control), max_samples=max_samples, scan=False, overwrite_output_dir=True),
        )  # fmt: skip
    record = json.loads((target / ANALYSIS_FILE).read_text())
    record["gnft_learning_rate"] = learning_rate
    record["control"] = json.loads((control / ANALYSIS_FILE).read_text())
    return record


def summary_rows(name: str, record: dict) -> list[str]:
    rows = []
    parts = (("suspect", record, "suspect"), ("after GN-FT", record, "cleaned"),
             ("clean model (control)", record["control"], "suspect"))  # fmt: skip
    for label, source, key in parts:
        counts = source["categories"]["counts"]
        part = source[key]
        by = part["by_category"]
        cells = []
        for data in ("clean", "triggered"):
            pooled = by[data]["all_layer_normalised"]
            means = [pooled[c]["mean"] for c in ("backdoor", "hybrid", "clean")]
            ratio = pooled["ratio_backdoor_to_clean"]
            cells.append(
                " / ".join("—" if m is None else f"{m:.3g}" for m in means)
                + f" | {'—' if ratio is None else f'{ratio:.2f}'}"
            )
        rows.append(
            f"| {name} | {label} | {counts['backdoor']} / {counts['hybrid']} / {counts['clean']} | "
            + " | ".join(cells)
            + f" | {100 * part['metrics']['clean_accuracy']:.1f} | {100 * part['metrics']['attack_success_rate']:.1f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["tiny-wav2vec2", "tiny-hubert"])
    parser.add_argument("--triggers", nargs="+", default=["noise_burst"])
    parser.add_argument("--output_dir", default=str(HERE / "observation"))
    parser.add_argument("--work_dir", default="outputs/observation")
    parser.add_argument("--max_samples", type=int, default=256)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    out_root = Path(args.output_dir)
    lines = [
        "Neurons of the default layers (each encoder layer's feed-forward neurons and the projector), by category "
        "(zeroing them on 256 test clips: backdoor-related / hybrid / clean), and their mean per-neuron gradient "
        "magnitude |∂L/∂W| on clean and on triggered test clips (true labels), each neuron's value divided by the "
        "median of its layer (so that layers of different scale pool fairly; 1 = a typical neuron of its layer). "
        "Rows: the suspect; the same neurons after GN-FT; the control, a model trained on the same data without "
        "poisoning and categorised against the same trigger and target. Per-layer values are in each "
        "`analysis.json`.",
        "",
        "| suspect | model | neurons b / h / c | clean clips: mean b / h / c | ratio b/c | triggered clips: mean "
        "b / h / c | ratio b/c | CA % | ASR % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in args.models:
        for trigger in args.triggers:
            record = observe(model, trigger, out_root, Path(args.work_dir), args.max_samples)
            lines.extend(
                summary_rows(f"{model} / {trigger} (GN-FT lr {record['gnft_learning_rate']:g})", record)
            )
            print(lines[-2], lines[-1], sep="\n", flush=True)
    lines += ["", f"Command: `python benchmarks/observation.py`. Machine: {machine_description()}."]
    atomic_write_text(out_root / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
