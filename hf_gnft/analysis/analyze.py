"""The neuron-gradient analysis of a checkpoint (and of its cleaned version): numbers, plots and the scan.

`recipes/analyze.py` is the command line of `run_analysis`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset

from ..attack import ATTACK_SPEC_FILE
from ..data.arguments import DataArguments
from ..models import load_suspect_model
from ..neurons import resolve_layers
from ..outputs import atomic_write_text, check_output_dir, machine_description, staged_output_dir
from ..pipeline import SuspectModelArguments
from ..poison import AttackSpec, make_triggered_eval_set
from ..settings import check_numeric_settings
from ..training import evaluate_backdoor
from .categories import categorize_neurons, mean_by_category
from .gradients import neuron_gradient_profile
from .plots import plot_before_after, plot_gradient_by_category, plot_layer_summary
from .scan import ScanCalibration, scan_model

logger = logging.getLogger(__name__)

ANALYSIS_FILE = "analysis.json"


@dataclass
class AnalysisArguments:
    """What to analyse and where to write it.

    Args:
        output_dir: the folder for `analysis.json` and the PNG plots (written atomically).
        cleaned_model: a cleaned checkpoint of the same model (e.g. `recipes/defend.py`'s output), to compare.
        layers: layer names to profile (default: each transformer layer's feed-forward neurons and the
            projector); an unknown name is an error that lists the model's layers.
        eval_split: the split whose clips (clean, and triggered when the attack is known) are analysed.
        max_samples: clips of each set used for the profiles and categories (drawn with a fixed seed).
        category_threshold: loss increase (nats) above which zeroing a neuron counts (see `categorize_neurons`).
        batch_size: clips per batch.
        scan: also scan the model(s) from clean data alone (`hf_gnft.analysis.scan_model`).
        scan_split: the clean split the scan uses (the defender's data, not the test split).
        scan_calibration: a calibration JSON for the scan (default: the shipped one).
        scan_max_clips: clean clips the scan uses (drawn with a fixed seed; the shipped calibration used 200).
        overwrite_output_dir: replace a finished output folder.
    """

    output_dir: str = field(
        default="outputs/analysis", metadata={"help": "Where analysis.json and plots go."}
    )
    cleaned_model: str | None = field(default=None, metadata={"help": "A cleaned checkpoint to compare."})
    layers: list[str] | None = field(default=None, metadata={"help": "Layer names to profile."})
    eval_split: str = "test"
    max_samples: int = 256
    category_threshold: float = 0.005
    batch_size: int = 32
    scan: bool = True
    scan_split: str = "validation"
    scan_calibration: str | None = None
    scan_max_clips: int = 200
    overwrite_output_dir: bool = False

    def __post_init__(self) -> None:
        check_numeric_settings(self)


def _sample(dataset: Dataset, count: int) -> Dataset:
    return dataset.shuffle(seed=0).select(range(count)) if len(dataset) > count else dataset


def run_analysis(
    data_args: DataArguments, model_args: SuspectModelArguments, args: AnalysisArguments
) -> dict[str, Any]:
    """Profile the suspect's neuron gradients on clean (and, with its attack spec, triggered) clips, categorise
    its neurons by ablation, compare with the cleaned model when given, scan it, and write `analysis.json` and
    the plots (`gradient_by_category.png`, `before_after.png`, `per_layer.png`) to `args.output_dir`.

    Returns:
        The record written to `analysis.json`.
    """
    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, overwrite=args.overwrite_output_dir)
    load = {
        "revision": model_args.model_revision,
        "trust_remote_code": model_args.trust_remote_code,
        "allow_pickle_weights": model_args.allow_pickle_weights,
    }
    model, extractor, provenance = load_suspect_model(model_args.model, return_provenance=True, **load)
    resolve_layers(model, args.layers)  # an unknown layer fails before any data is loaded
    cleaned = None
    if args.cleaned_model:
        cleaned, _, cleaned_provenance = load_suspect_model(
            args.cleaned_model, return_provenance=True, **load
        )
    spec_path = model_args.attack_spec or (
        str(Path(model_args.model) / ATTACK_SPEC_FILE) if (Path(model_args.model) / ATTACK_SPEC_FILE).is_file() else None
    )  # fmt: skip
    spec = AttackSpec.from_json(spec_path) if spec_path else None
    dataset = data_args.load(data_args.sampling_rate)
    if args.eval_split not in dataset:
        raise ValueError(f"no split {args.eval_split!r}; the dataset has {list(dataset)}")
    test = dataset[args.eval_split]
    triggered = (
        make_triggered_eval_set(test, spec.build_trigger(), spec.target_label, num_proc=data_args.num_proc)
        if spec
        else None
    )
    target = spec.target_label if spec else None
    clean_clips = _sample(test, args.max_samples)
    triggered_clips = _sample(triggered, args.max_samples) if triggered is not None else None

    def measure(network) -> dict[str, Any]:
        metrics = evaluate_backdoor(network, extractor, test, triggered, target).to_dict()
        profiles = {
            "clean": neuron_gradient_profile(
                network,
                extractor,
                clean_clips,
                args.layers,
                batch_size=args.batch_size,
                desc="Gradients on clean clips",
            )  # fmt: skip
        }
        if triggered_clips is not None:
            profiles["triggered"] = neuron_gradient_profile(
                network, extractor, triggered_clips, args.layers, batch_size=args.batch_size,
                desc="Gradients on triggered clips",
            )  # fmt: skip
        return {"metrics": metrics, "profiles": profiles}

    suspect = measure(model)
    categories = None
    if triggered_clips is not None:
        categories = categorize_neurons(model, extractor, clean_clips, triggered_clips, target, args.layers,
                                        threshold=args.category_threshold, max_samples=None,
                                        batch_size=2 * args.batch_size)  # fmt: skip
    after = measure(cleaned) if cleaned is not None else None
    calibration = ScanCalibration.from_json(args.scan_calibration) if args.scan_calibration else None
    scans = {}
    if args.scan:
        if args.scan_split not in dataset:
            raise ValueError(f"no scan split {args.scan_split!r}; the dataset has {list(dataset)}")
        scans["suspect"] = scan_model(model, extractor, dataset[args.scan_split], layers=args.layers,
                                      calibration=calibration, max_clips=args.scan_max_clips).to_dict()  # fmt: skip
        if cleaned is not None:
            scans["cleaned"] = scan_model(cleaned, extractor, dataset[args.scan_split], layers=args.layers,
                                          calibration=calibration, max_clips=args.scan_max_clips).to_dict()  # fmt: skip

    def summary(measured: dict[str, Any]) -> dict[str, Any]:
        out = {
            "metrics": measured["metrics"],
            "profiles": {k: v.to_dict() for k, v in measured["profiles"].items()},
        }
        if categories is not None:
            out["by_category"] = {k: mean_by_category(v, categories) for k, v in measured["profiles"].items()}
        return out

    record: dict[str, Any] = {
        "suspect": {"provenance": provenance.to_dict(), **summary(suspect)},
        "attack": spec.to_dict() if spec else None,
        "categories": categories.to_dict() if categories is not None else None,
        "cleaned": (
            {"provenance": cleaned_provenance.to_dict(), **summary(after)} if after is not None else None
        ),
        "scan": scans,
        "settings": {
            k: v
            for k, v in asdict(args).items()
            if k not in ("output_dir", "cleaned_model", "scan_calibration")
        },
        "data_args": {k: v for k, v in asdict(data_args).items() if k not in ("cache_dir", "data_dir")},
        "machine": machine_description(),
    }
    with staged_output_dir(output_dir, overwrite=args.overwrite_output_dir) as staged:
        name = provenance.describe()
        if categories is not None:
            plot_gradient_by_category(
                {f"{label} clips": profile for label, profile in suspect["profiles"].items()},
                categories, staged.path / "gradient_by_category.png", title=name,
            )  # fmt: skip
            if after is not None:
                plot_before_after(
                    {f"{label} clips": (profile, after["profiles"][label])
                     for label, profile in suspect["profiles"].items()},
                    categories, staged.path / "before_after.png",
                    asr=(suspect["metrics"]["attack_success_rate"], after["metrics"]["attack_success_rate"]),
                    title=f"{name} before and after the defense",
                )  # fmt: skip
        plot_layer_summary(suspect["profiles"]["clean"], categories, staged.path / "per_layer.png",
                           title=f"{name}: gradients on clean clips by layer")  # fmt: skip
        record["seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_text(staged.path / ANALYSIS_FILE, json.dumps(record, indent=2, default=str))
    logger.info("Analysis of %s written to %s", provenance.describe(), output_dir)
    return record
