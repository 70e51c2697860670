"""Clean a suspect keyword-spotting model with GN-FT (or plain fine-tuning) and measure it before and after.

The configuration is dataclasses that `HfArgumentParser` reads from the command line or YAML
(`recipes/defend.py`, also under `accelerate launch`); `run_defense` is the same pipeline in Python.
The defender trains on clean data only. The attack spec, when given, is used only to measure the
attack success rate before and after; it never influences training.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel
from transformers.trainer_utils import get_last_checkpoint

from .attack import ATTACK_SPEC_FILE
from .audio import AudioError
from .data.arguments import CleanDataArguments, CleanDataError, DataArguments
from .defenses.gnft_config import GNFTConfig
from .defenses.gnft_trainer import GNFTTrainer
from .hub import PushResult, push_output_dir, redact_local, write_model_card
from .metrics import BackdoorMetrics
from .models import load_suspect_model
from .outputs import (
    atomic_write_text,
    check_output_dir,
    machine_description,
    partial_dir,
    resume_checkpoint,
    save_shareable_model,
    staged_output_dir,
)
from .poison import AttackSpec, make_triggered_eval_set
from .trainer_args import is_main_process
from .training import evaluate_backdoor, train_timed
from .version import __version__

logger = logging.getLogger(__name__)

DEFENSE_METRICS_FILE = "defense_metrics.json"
DEFENSE_TABLE_FILE = "defense_table.md"


def format_before_after(before: BackdoorMetrics, after: BackdoorMetrics, der: float | None = None) -> str:
    """A markdown table of CA / ASR / RA (%) before and after a defense, and the DER."""

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    lines = ["| | CA % | ASR % | RA % |", "|---|---|---|---|"]
    for name, metrics in (("before", before), ("after", after)):
        lines.append(
            f"| {name} | {cell(metrics.clean_accuracy)} | {cell(metrics.attack_success_rate)} "
            f"| {cell(metrics.robust_accuracy)} |"
        )
    if der is not None:
        lines.append(f"\nDER = {der:.3f}")
    return "\n".join(lines)


@dataclass
class SuspectModelArguments:
    """The model to clean.

    Args:
        model: a local folder or Hub id of an `AutoModelForAudioClassification` checkpoint (safetensors only).
        model_revision: Hub revision (branch, tag or commit).
        trust_remote_code: run code shipped with the checkpoint (off unless asked for).
        allow_pickle_weights: load a checkpoint whose weights are only pickles (`pytorch_model.bin`); refused
            by default, with the command that converts it to safetensors.
        attack_spec: the `attack_spec.json` of a known attack, to measure ASR / RA / DER; defaults to the one
            next to the model when there is one. Used for evaluation only.
    """

    model: str = field(default="outputs/attack", metadata={"help": "Suspect checkpoint (folder or Hub id)."})
    model_revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Load a checkpoint that has only pickled weights (torch.load with weights_only=True)."
        },
    )
    attack_spec: str | None = None


@dataclass
class DefenseResult:
    """What `run_defense` wrote and measured."""

    output_dir: str
    before: BackdoorMetrics
    after: BackdoorMetrics
    record: dict[str, Any] = field(default_factory=dict)
    push: PushResult | None = None


def validation_drop(record: dict[str, Any]) -> float:
    """Clean validation accuracy before minus after, from a `defense_metrics.json` record."""
    accuracy = record["validation_accuracy"]
    if accuracy["before"] is None or accuracy["after"] is None:
        raise CleanDataError("the defense ran without a validation split: no validation accuracy to compare")
    return accuracy["before"] - accuracy["after"]


def choose_strongest(
    drops: dict[float, list[float]],
    max_drop: float = 0.02,
    min_runs: int = 1,
    larger_is_stronger: bool = True,
) -> float | None:
    """The defender's choice, from clean validation data only: the strongest setting (the largest value, or
    the smallest when `larger_is_stronger` is False) whose mean validation-accuracy drop over its runs (e.g.
    seeds) is at most `max_drop`; `None` if none is.

    Args:
        drops: setting -> the validation drops (fractions) of its runs, as `validation_drop` gives.
        max_drop: the largest acceptable mean drop (0.02 = 2 points).
        min_runs: settings with fewer runs are not considered.
        larger_is_stronger: whether a larger value is the stronger defense (a learning rate, a pruning
            threshold) or a smaller one (CLP's u).
    """
    allowed = [
        value
        for value, runs in drops.items()
        if len(runs) >= max(min_runs, 1) and sum(runs) / len(runs) <= max_drop
    ]
    if not allowed:
        return None
    return max(allowed) if larger_is_stronger else min(allowed)


def choose_learning_rate(
    drops: dict[float, list[float]], max_drop: float = 0.02, min_runs: int = 1
) -> float | None:
    """`choose_strongest` for learning rates: the largest whose mean validation drop is at most `max_drop`."""
    return choose_strongest(drops, max_drop, min_runs, larger_is_stronger=True)


def _check_labels(model: PreTrainedModel, dataset: Dataset) -> None:
    model_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    data_names = dataset.features["label"].names
    if model_names != data_names:
        raise CleanDataError(
            f"the model's classes {model_names} differ from the data's {data_names}: clean data must use the "
            "suspect model's label space"
        )


def shareable_data_args(data_args: DataArguments) -> dict[str, Any]:
    """`data_args` for records that leave the machine: no cache folder, no process count, no local paths."""
    values = {k: v for k, v in asdict(data_args).items() if k not in ("cache_dir", "num_proc")}
    return redact_local(values)


def run_defense(
    data_args: DataArguments,
    clean_args: CleanDataArguments,
    model_args: SuspectModelArguments,
    config: GNFTConfig,
) -> DefenseResult:
    """Fine-tune the suspect model on clean data with GN-FT (`config.gn_alpha > 0`) or plainly (`= 0`).

    Writes to `config.output_dir`, atomically (everything goes to `OUTPUT_DIR.partial/`, renamed at the
    end): the cleaned model (safetensors), its feature extractor, `defense_metrics.json` (CA / ASR / RA
    before and after, DER, wall time, hyperparameters, the suspect's provenance; no local paths), the model
    card `README.md` and, when known, a copy of the attack spec. A finished output folder is not replaced
    unless `config.overwrite_output_dir`; with checkpoints on, an interrupted run resumes with
    `config.resume_from_checkpoint=True`. With `config.push_to_hub` (or `hub_dry_run`) the finished folder is
    then pushed (or listed).
    """
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    overwrite = bool(getattr(config, "overwrite_output_dir", False))
    resume = resume_checkpoint(output_dir, config.resume_from_checkpoint)  # every rank resumes from it
    check_output_dir(output_dir, overwrite=overwrite, resume=resume is not None)  # before any work
    model, extractor, provenance = load_suspect_model(
        model_args.model,
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
        allow_pickle_weights=model_args.allow_pickle_weights,
        return_provenance=True,
    )
    spec_path = model_args.attack_spec or (
        str(Path(model_args.model) / ATTACK_SPEC_FILE)
        if (Path(model_args.model) / ATTACK_SPEC_FILE).is_file()
        else None
    )
    spec = AttackSpec.from_json(spec_path) if spec_path else None
    if extractor.sampling_rate != data_args.sampling_rate:
        raise AudioError(
            f"the model takes {extractor.sampling_rate} Hz audio but the data is loaded at "
            f"{data_args.sampling_rate} Hz: pass --sampling_rate {extractor.sampling_rate}"
        )
    dataset = data_args.load(data_args.sampling_rate)
    for split in (clean_args.clean_split, clean_args.eval_split):
        if split not in dataset:
            raise CleanDataError(f"no split {split!r}; the dataset has {list(dataset)}")
    clean = clean_args.select(dataset[clean_args.clean_split])
    test = dataset[clean_args.eval_split]
    _check_labels(model, test)
    triggered = (
        make_triggered_eval_set(test, spec.build_trigger(), spec.target_label, num_proc=data_args.num_proc)
        if spec
        else None
    )
    target = spec.target_label if spec else None
    before = evaluate_backdoor(model, extractor, test, triggered, target)
    validation = dataset.get(clean_args.validation_split) if clean_args.validation_split else None
    validation_before = evaluate_backdoor(model, extractor, validation).clean_accuracy if validation else None

    main_process = is_main_process(config)
    push_to_hub, hub_dry_run = config.push_to_hub, bool(getattr(config, "hub_dry_run", False))
    try:
        with staged_output_dir(output_dir, overwrite=overwrite, resume=resume is not None,
                               main_process=main_process) as staged:  # fmt: skip
            # The Trainer never pushes by itself (not at init, not in save_model): the finished folder is pushed below.
            config.output_dir, config.push_to_hub = str(staged.path), False
            try:
                trainer, _, train_seconds = train_timed(
                    GNFTTrainer, model, config, clean, extractor, resume_from_checkpoint=resume
                )
            finally:
                config.output_dir = str(output_dir)
            after = evaluate_backdoor(trainer.model, extractor, test, triggered, target)
            validation_after = (
                evaluate_backdoor(trainer.model, extractor, validation).clean_accuracy if validation else None
            )
            record = {
                "before": before.to_dict(),
                "after": after.to_dict(),
                "validation_accuracy": {"before": validation_before, "after": validation_after},
                "der": after.der_against(before) if spec else None,
                "defense": "gn-ft" if config.gn_alpha > 0 else "ft",
                "train_seconds": round(train_seconds, 2),
                "total_seconds": round(time.perf_counter() - started, 2),
                "clean_rows": len(clean),
                "suspect": provenance.to_dict(),
                "resumed_from": Path(resume).name if resume else None,
                "attack": spec.to_dict() if spec else None,
                "clean_data": asdict(clean_args),
                "data_args": shareable_data_args(data_args),
                "gn": {
                    key: getattr(config, key)
                    for key in (
                        "gn_alpha",
                        "gn_radius",
                        "gn_norm",
                        "gn_mode",
                        "gn_warmup_steps",
                        "gn_parameters",
                    )
                },
                "optim": {
                    key: getattr(config, key)
                    for key in (
                        "optim",
                        "optim_args",
                        "learning_rate",
                        "weight_decay",
                        "lr_scheduler_type",
                        "num_train_epochs",
                        "per_device_train_batch_size",
                        "seed",
                    )
                },  # fmt: skip
                "log_history": trainer.state.log_history,
                "machine": machine_description(),
                "hf_gnft_version": __version__,
            }
            staged.publish = main_process and trainer.is_world_process_zero()
            if staged.publish:
                save_shareable_model(trainer, extractor, staged.path)
                (staged.path / DEFENSE_METRICS_FILE).write_text(json.dumps(record, indent=2, default=str))
                (staged.path / DEFENSE_TABLE_FILE).write_text(
                    format_before_after(before, after, record["der"]) + "\n"
                )
                if spec:
                    spec.to_json(str(staged.path / ATTACK_SPEC_FILE))
                write_model_card(staged.path, record, config.hub_model_id or output_dir.name)
    finally:
        config.push_to_hub = push_to_hub
    logger.info(
        "Cleaned model in %s: CA %.1f%% -> %.1f%%%s",
        output_dir,
        100 * before.clean_accuracy,
        100 * after.clean_accuracy,
        f", ASR {100 * before.attack_success_rate:.1f}% -> {100 * after.attack_success_rate:.1f}%"
        if spec
        else "",
    )
    result = DefenseResult(output_dir=str(output_dir), before=before, after=after, record=record)
    if main_process and (push_to_hub or hub_dry_run):
        result.push = push_output_dir(output_dir, config.hub_model_id, private=config.hub_private_repo,
                                      token=config.hub_token, dry_run=hub_dry_run)  # fmt: skip
    return result


LEARNING_RATE_SEARCH_FILE = "learning_rate_search.json"


@dataclass
class LearningRateSearchArguments:
    """Choose the defense's learning rate from clean validation accuracy only (no trigger, no test set).

    The learning rate moves ASR more than any penalty setting (see the README's sweep), and the defender
    cannot measure ASR. With a grid, one defense runs per candidate and the largest learning rate whose clean
    validation accuracy drops by at most `max_validation_drop` is kept.

    Args:
        learning_rate_grid: candidate learning rates (`--learning_rate` is then ignored). Unset: one run.
        max_validation_drop: the largest acceptable drop of clean validation accuracy (0.02 = 2 points).
        keep_candidates: keep every candidate's model and metrics in `OUTPUT_DIR.lr-candidates/` (by default
            they are removed once the chosen one is published; they are always kept when none qualifies).
    """

    learning_rate_grid: list[float] | None = field(
        default=None, metadata={"help": "Candidate learning rates, chosen by clean validation accuracy."}
    )
    max_validation_drop: float = field(
        default=0.02, metadata={"help": "Largest acceptable drop of clean validation accuracy."}
    )
    keep_candidates: bool = False

    def __post_init__(self) -> None:
        if self.learning_rate_grid is not None:
            if not self.learning_rate_grid or not all(lr > 0 for lr in self.learning_rate_grid):
                raise ValueError(
                    f"learning_rate_grid must hold positive values, got {self.learning_rate_grid}"
                )
        if not 0 <= self.max_validation_drop <= 1:
            raise ValueError(f"max_validation_drop must be in [0, 1], got {self.max_validation_drop}")


def _finished_candidate(
    folder: Path, config: GNFTConfig, clean_args: CleanDataArguments
) -> DefenseResult | None:
    """A candidate of an earlier, interrupted search that finished with the same settings, to reuse."""
    path = folder / DEFENSE_METRICS_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    same = record.get("clean_data") == asdict(clean_args) and all(
        record.get(group, {}).get(key) == getattr(config, key)
        for group in ("gn", "optim")
        for key in record.get(group, {})
    )
    if not same:
        return None
    return DefenseResult(
        str(folder), BackdoorMetrics(**record["before"]), BackdoorMetrics(**record["after"]), record
    )


def search_learning_rate(
    data_args: DataArguments,
    clean_args: CleanDataArguments,
    model_args: SuspectModelArguments,
    config: GNFTConfig,
    search: LearningRateSearchArguments,
) -> DefenseResult:
    """Run the defense once per learning rate of `search.learning_rate_grid`, keep the largest one whose clean
    validation accuracy drops by at most `search.max_validation_drop`, and publish it to `config.output_dir`
    (with `learning_rate_search.json`: every candidate's validation drop). ASR plays no part in the choice.

    Candidates go to `OUTPUT_DIR.lr-candidates/lr-*`; a search run again after an interruption reuses the
    candidates that finished with the same settings. The chosen one is published (and pushed, with
    `config.push_to_hub`) with its card.

    Raises `CleanDataError` when there is no validation split, or when no candidate qualifies (the candidates
    are then left in `OUTPUT_DIR.lr-candidates/` for inspection; nothing is written to `output_dir`).
    """
    if not clean_args.validation_split:
        raise CleanDataError("a learning-rate search needs a clean validation split (--validation_split)")
    output_dir = Path(config.output_dir)
    overwrite = bool(getattr(config, "overwrite_output_dir", False))
    check_output_dir(output_dir, overwrite=overwrite)
    candidates_dir = output_dir.parent / f"{output_dir.name}.lr-candidates"
    grid = sorted(set(search.learning_rate_grid))
    results: dict[float, DefenseResult] = {}
    for lr in grid:
        candidate = copy.deepcopy(config)
        candidate.output_dir = str(candidates_dir / f"lr-{lr:g}")
        candidate.learning_rate = lr
        candidate.push_to_hub, candidate.hub_dry_run = False, False
        finished = _finished_candidate(Path(candidate.output_dir), candidate, clean_args)
        if finished is not None:
            logger.info("Learning-rate search: reusing the finished run with lr %g", lr)
            results[lr] = finished
            continue
        resumable = get_last_checkpoint(str(partial_dir(candidate.output_dir))) if partial_dir(
            candidate.output_dir).is_dir() else None  # fmt: skip
        candidate.resume_from_checkpoint = resumable if config.resume_from_checkpoint else None
        candidate.overwrite_output_dir = True
        logger.info("Learning-rate search: running the defense with lr %g", lr)
        results[lr] = run_defense(data_args, clean_args, model_args, candidate)
    drops = {lr: validation_drop(result.record) for lr, result in results.items()}
    chosen = choose_learning_rate({lr: [drop] for lr, drop in drops.items()}, search.max_validation_drop)
    summary = {
        "grid": grid,
        "max_validation_drop": search.max_validation_drop,
        "validation_drop": {f"{lr:g}": drop for lr, drop in drops.items()},
        "chosen_learning_rate": chosen,
    }
    main_process = is_main_process(config)
    if main_process:
        atomic_write_text(candidates_dir / LEARNING_RATE_SEARCH_FILE, json.dumps(summary, indent=2))
    if chosen is None:
        raise CleanDataError(
            f"no learning rate in {grid} kept the clean validation accuracy within {search.max_validation_drop:.3f} "
            f"(drops: {summary['validation_drop']}); the candidates are in {candidates_dir}"
        )
    logger.info("Learning-rate search: chose lr %g (validation drops %s)", chosen, summary["validation_drop"])
    result = results[chosen]
    result.output_dir = str(output_dir)
    result.record["learning_rate_search"] = summary
    with staged_output_dir(output_dir, overwrite=overwrite, main_process=main_process) as staged:
        if main_process:
            shutil.copytree(candidates_dir / f"lr-{chosen:g}", staged.path, dirs_exist_ok=True)
            (staged.path / LEARNING_RATE_SEARCH_FILE).write_text(json.dumps(summary, indent=2))
            (staged.path / DEFENSE_METRICS_FILE).write_text(json.dumps(result.record, indent=2, default=str))
            write_model_card(staged.path, result.record, config.hub_model_id or output_dir.name)
    if main_process and not search.keep_candidates:
        shutil.rmtree(candidates_dir, ignore_errors=True)
    if main_process and (config.push_to_hub or getattr(config, "hub_dry_run", False)):
        result.push = push_output_dir(output_dir, config.hub_model_id, private=config.hub_private_repo,
                                      token=config.hub_token, dry_run=getattr(config, "hub_dry_run", False))  # fmt: skip
    return result
