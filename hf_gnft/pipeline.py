"""One defense pipeline for every method: load the untrusted suspect → select the clean subset → defend →
evaluate before and after → record, card → publish atomically → push.

Every method of `hf_gnft.defenses` (`gn-ft`, `ft`, `ft-sam`, `fp`, `nad`, `anp`, `clp`, `tsbd`, ...) runs
through `run_defense`; `search_knob` runs it once per value of the method's knob and publishes the strongest
value the defender's rule allows (clean validation accuracy only). The benchmark calls `apply_method`, the
same step, so its numbers are what `hf-gnft defend` gives for the same arguments. The configuration is
dataclasses that `HfArgumentParser` reads from the command line or YAML (`hf-gnft defend`, also under
`accelerate launch`). The defender trains on clean data only; the attack spec, when given, is used only to
measure the attack success rate before and after and never influences the defense.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .attack import ATTACK_SPEC_FILE
from .audio import AudioError
from .data.arguments import CleanDataArguments, CleanDataError, DataArguments
from .defenses import DEFENSE_METHODS, DefenseMethod, DefenseOutcome, get_defense
from .hub import PushResult, push_output_dir, redact_local, write_model_card
from .inversion import detection_settings, invert_classes, reinversion_check, reinversion_clips
from .lasting import RelapseConfig, relapse_check, relapse_summary
from .metrics import BackdoorMetrics
from .models import inspect_checkpoint, load_suspect_model
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
from .retuning import RetuningConfig, retuning_attack, select_retuning_rows
from .settings import check_numeric_settings
from .trainer_args import is_main_process
from .training import evaluate_backdoor
from .triggers import Trigger, TriggerError
from .version import __version__

logger = logging.getLogger(__name__)

DEFENSE_METRICS_FILE = "defense_metrics.json"
DEFENSE_TABLE_FILE = "defense_table.md"
KNOB_SEARCH_FILE = "knob_search.json"

#: Config keys that say where and how a run writes, not what the defense does: left out of the records.
RUN_LOCAL_KEYS = frozenset(
    {
        "output_dir",
        "logging_dir",
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "push_to_hub",
        "hub_model_id",
        "hub_token",
        "hub_private_repo",
        "hub_dry_run",
        "hub_strategy",
        "hub_always_push",
        "hub_revision",
        "report_to",
        "disable_tqdm",
        "run_name",
        "trackio_space_id",
        "project",
    }
)
#: The optimizer settings the card shows for a method that trains.
OPTIMIZER_KEYS = (
    "optim",
    "optim_args",
    "learning_rate",
    "weight_decay",
    "lr_scheduler_type",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "label_smoothing_factor",
    "seed",
)


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
    model_revision: str | None = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped with the checkpoint (off unless asked for)."}
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Load a checkpoint that has only pickled weights (torch.load with weights_only=True)."
        },
    )
    attack_spec: str | None = field(
        default=None,
        metadata={
            "help": "attack_spec.json of a known attack, to measure ASR / RA / DER (default: the one next to the "
            "model). Used for evaluation only."
        },
    )


@dataclass
class DefenseArguments:
    """Which defense runs, and how its knob is chosen.

    Args:
        defense: the method (a key of `hf_gnft.DEFENSE_METHODS`; default: the method whose config class the
            config is, `gn-ft` on the command line). Its own settings are flags too (`hf-gnft defend --defense nad
            --help` lists them).
        knob: the setting `knob_grid` tunes (default: the method's knob, e.g. `learning_rate` for the
            fine-tuning defenses, `tsbd_neuron_ratio` for TSBD).
        knob_grid: candidate values of the knob. One defense runs per value and the strongest whose clean
            validation accuracy drops by at most `max_validation_drop` is published; the trigger and the test
            set play no part. Unset: one run with the configured value.
        learning_rate_grid: shorthand for `--knob learning_rate --knob_grid ...`.
        max_validation_drop: the largest acceptable drop of clean validation accuracy (0.02 = 2 points).
        keep_candidates: keep every candidate in `OUTPUT_DIR.candidates/` (by default removed once the chosen
            one is published; always kept when none qualifies).
        retuning_check: when the attack is known, run `hf_gnft.retuning_attack` (5 triggered clips, the true
            trigger and target) on the suspect and on the defended model and record both ASRs. Evaluation only:
            it never influences the defense or the knob's choice.
        reinversion_check: invert every class of the suspect from clean validation clips, and re-invert the
            classes that stand out against the defended model ([`hf_gnft.inversion.reinversion_check`]): clean
            data only, so a knob search uses it too (among the candidates within the validation drop, the one
            least easily re-inverted is published).
        relapse_check: fine-tune the defended model again on the clean subset alone (the FT defense at lr 0.01 and
            0.05, [`hf_gnft.lasting.relapse_check`]) and record CA / ASR after it and, with `reinversion_check`, a
            re-inversion: does the backdoor come back with an ordinary fine-tune? Clean data only, so a knob search
            counts its re-inversion too.
    """

    defense: str | None = field(
        default=None, metadata={"help": f"The defense (default gn-ft): one of {', '.join(DEFENSE_METHODS)}."}
    )
    knob: str | None = field(
        default=None, metadata={"help": "The setting --knob_grid tunes (default: the defense's own knob)."}
    )
    knob_grid: list[float] | None = field(
        default=None,
        metadata={"help": "Candidate knob values; the strongest within --max_validation_drop is published."},
    )
    learning_rate_grid: list[float] | None = field(
        default=None, metadata={"help": "Shorthand for --knob learning_rate --knob_grid VALUES."}
    )
    max_validation_drop: float = field(
        default=0.02,
        metadata={"help": "Largest acceptable drop of clean validation accuracy (0.02 = 2 points)."},
    )
    max_accuracy_drop: float = field(
        default=0.2,
        metadata={
            "help": "A defended model (or knob candidate) whose clean validation accuracy fell by more than "
            "this, or to chance level, or whose weights are not finite, is not written (0.2 = 20 points)."
        },
    )
    keep_candidates: bool = field(
        default=False, metadata={"help": "Keep every candidate of a knob search in OUTPUT_DIR.candidates/."}
    )
    retuning_check: bool = field(
        default=True,
        metadata={
            "help": "When the attack is known: fine-tune the suspect and the defended model on 5 triggered clips "
            "mixed with the clean ones and record the ASR after it (does the backdoor come back?)."
        },
    )
    reinversion_check: bool = field(
        default=True,
        metadata={
            "help": "Invert the suspect's classes from clean validation clips and re-invert the suspected targets "
            "against the defended model (clean data only; a knob search prefers the least re-invertible candidate)."
        },
    )

    relapse_check: bool = field(
        default=True,
        metadata={
            "help": "Fine-tune the defended model again on the clean subset alone (FT at lr 0.01 and 0.05) and "
            "record CA / ASR and a re-inversion after it (does the backdoor come back?)."
        },
    )

    def __post_init__(self) -> None:
        check_numeric_settings(self)
        method = (
            get_defense(self.defense) if self.defense is not None else None
        )  # unknown: lists the known ones
        if self.learning_rate_grid is not None:
            if self.knob_grid is not None:
                raise ValueError("pass either --learning_rate_grid or --knob_grid, not both")
            if self.knob not in (None, "learning_rate"):
                raise ValueError(f"--learning_rate_grid tunes learning_rate, but --knob is {self.knob!r}")
            self.knob, self.knob_grid = "learning_rate", list(self.learning_rate_grid)
            self.learning_rate_grid = None
        if self.knob is not None and method is not None:
            check_setting(method, self.knob, "--knob")
        if self.knob_grid is not None:
            if not self.knob_grid or not all(
                isinstance(v, int | float) and math.isfinite(v) for v in self.knob_grid
            ):
                raise ValueError(f"knob_grid must hold finite numbers, got {self.knob_grid}")
            if self.knob == "learning_rate" and not all(v > 0 for v in self.knob_grid):
                raise ValueError(f"learning rates must be positive, got {self.knob_grid}")
        if not 0 <= self.max_validation_drop <= 1:
            raise ValueError(f"max_validation_drop must be in [0, 1], got {self.max_validation_drop}")

    def for_config(self, config: Any) -> DefenseArguments:
        """These arguments with `defense` resolved (the method whose config class `config` is, when unset) and
        `config` checked to be that method's config."""
        resolved = (
            self
            if self.defense is not None
            else dataclasses.replace(self, defense=method_for_config(config).name)
        )
        check_config(resolved.method, config)
        return resolved

    @property
    def method(self) -> DefenseMethod:
        if self.defense is None:
            raise ValueError("no defense named: pass defense=NAME or resolve it with for_config(config)")
        return get_defense(self.defense)

    @property
    def knob_name(self) -> str:
        return self.knob or self.method.knob

    @property
    def larger_is_stronger(self) -> bool:
        """The knob's direction: the method's for its own knob; a larger value otherwise (a learning rate)."""
        return self.method.stronger_when_larger(self.knob_name)


@dataclass
class OutputArguments:
    """Where the defended model goes, for a method whose config is not a `TrainingArguments` (ANP, CLP).
    A training method's config (`DefenseConfig` and its subclasses) holds these same fields itself.

    Args:
        output_dir: where the cleaned model is written.
        overwrite_output_dir: replace a finished output folder (once the new one is complete).
        push_to_hub: push the finished folder to the Hub.
        hub_model_id: the Hub repo, `NAMESPACE/NAME`.
        hub_private_repo: create the repo private.
        hub_token: a token (default: `HF_TOKEN` or the stored login); never printed or written.
        hub_dry_run: list the files a push would upload, and upload nothing.
    """

    output_dir: str | None = field(default=None, metadata={"help": "Where the cleaned model is written."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished output folder (once the new one is complete)."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Push the finished folder to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "The Hub repo, NAMESPACE/NAME."})
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Create the Hub repo private."})
    hub_token: str | None = field(
        default=None, metadata={"help": "Hub token (default: HF_TOKEN or the login)."}
    )
    hub_dry_run: bool = field(
        default=False, metadata={"help": "List the files a push would upload, and upload nothing."}
    )

    def __post_init__(self) -> None:
        if self.push_to_hub and not self.hub_model_id and not self.hub_dry_run:
            raise ValueError("--push_to_hub needs --hub_model_id NAMESPACE/NAME (or --hub_dry_run true)")

    @classmethod
    def from_config(cls, config: Any) -> OutputArguments:
        """The output fields a training config carries itself."""
        return cls(**{f.name: getattr(config, f.name, f.default) for f in dataclasses.fields(cls)})


@dataclass
class SuspectMeasurements:
    """What `run_defense` measures on the suspect itself, the same for every defense of the same suspect on the
    same data: CA / ASR / RA and validation accuracy before, the suspect's inversion of every class (the
    re-inversion checks' detection) and its retuning check. Pass `DefenseResult.suspect_measurements` to the next
    `run_defense` of that suspect to measure them once (`make demo`'s FT and GN-FT do).

    Args:
        key: what they were measured on (the suspect's provenance, the data's fingerprint, the retuning settings).
        before: the suspect's metrics on the evaluation split.
        validation_before: its clean validation accuracy (`None` without a validation split).
        detection: its inversion of every class on the re-inversion clips (`None` until a re-inversion ran).
        retuned_before: its retuning check's metrics (`None` when not run).
    """

    key: str
    before: BackdoorMetrics
    validation_before: float | None
    detection: Any = None
    retuned_before: dict[str, Any] | None = None


@dataclass
class DefenseResult:
    """What `run_defense` wrote and measured."""

    output_dir: str
    before: BackdoorMetrics
    after: BackdoorMetrics
    record: dict[str, Any] = field(default_factory=dict)
    push: PushResult | None = None
    suspect_measurements: SuspectMeasurements | None = None


def owners_of(setting: str) -> list[str]:
    """The defenses whose config has a field called `setting`."""
    return [name for name, method in DEFENSE_METHODS.items() if setting in method.setting_names]


def check_setting(method: DefenseMethod, setting: str, what: str = "setting") -> None:
    """`setting` is a field of `method`'s config; else an error naming the defenses it belongs to."""
    if setting in method.setting_names:
        return
    owners = owners_of(setting)
    where = f"it belongs to {', '.join(owners)}" if owners else "no defense has it"
    raise ValueError(f"{what} {setting!r} is not a setting of the {method.name!r} defense ({where})")


def check_config(method: DefenseMethod, config: Any) -> None:
    """`config` configures `method`: an instance of its config class and not of another method's more specific
    one (a `TSBDConfig` is a `DefenseConfig`, but it configures TSBD, not GN-FT); GN-FT with `gn_alpha = 0` is
    plain fine-tuning and must say so (`ft`)."""
    if not isinstance(config, method.config_class):
        raise ValueError(
            f"the {method.name!r} defense takes a {method.config_class.__name__}, got {type(config).__name__}"
        )
    for other in DEFENSE_METHODS.values():
        if (
            other is not method
            and isinstance(config, other.config_class)
            and issubclass(other.config_class, method.config_class)
        ):
            raise ValueError(
                f"a {type(config).__name__} configures the {other.name!r} defense, not {method.name!r}: pass "
                f"defense={other.name!r} (or --defense {other.name})"
            )
    if method.name == "gn-ft" and getattr(config, "gn_alpha", None) == 0:
        raise ValueError(
            "GN-FT with gn_alpha = 0 is plain fine-tuning: run the 'ft' defense (--defense ft) instead"
        )


def method_for_config(config: Any) -> DefenseMethod:
    """The registered defense whose config class `config` is exactly (e.g. `DefenseConfig` -> `gn-ft`)."""
    for method in DEFENSE_METHODS.values():
        if type(config) is method.config_class:
            return method
    raise ValueError(
        f"no defense is configured by {type(config).__name__}; pass defense=NAME (one of {', '.join(DEFENSE_METHODS)})"
    )


def config_settings(config: Any) -> dict[str, Any]:
    """Every setting of a defense config that changes what it does (no paths, tokens or Hub targets), as JSON
    values: what a record holds and what a search compares before reusing a candidate."""
    if isinstance(config, TrainingArguments):
        values = {key: value for key, value in config.to_dict().items() if not key.startswith("_")}
    else:
        values = asdict(config)
    values = {key: value for key, value in values.items() if key not in RUN_LOCAL_KEYS}
    return json.loads(json.dumps(values, default=str))


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
    allowed = [  # a drop of exactly `max_drop` qualifies: the mean of float drops may exceed it by rounding
        value
        for value, runs in drops.items()
        if len(runs) >= max(min_runs, 1) and sum(runs) / len(runs) <= max_drop + 1e-9
    ]
    if not allowed:
        return None
    return max(allowed) if larger_is_stronger else min(allowed)


def record_reinversion(record: dict[str, Any]) -> float | None:
    """The largest re-inversion success of a defense record: against the defended model and, with the relapse
    check, after each clean fine-tune (both clean data only); `None` when no class is suspected."""
    values = [(record.get("reinversion") or {}).get("max_success_after"),
              relapse_summary(record.get("relapse"))["reinversion"]]  # fmt: skip
    values = [value for value in values if value is not None]
    return max(values) if values else None


def choose_candidate(
    drops: dict[float, float],
    reinverted: dict[float, float | None],
    max_drop: float = 0.02,
    larger_is_stronger: bool = True,
    tolerance: float = 0.02,
) -> float | None:
    """The defender's choice from clean data only: among the settings whose validation drop is at most
    `max_drop`, the one whose fresh re-inversion succeeds least (`reinverted`: its largest success over the
    suspected targets; `None` where no class is suspected); successes within `tolerance` of the lowest count as
    equal, and among those the strongest value wins. Without re-inversion results, the strongest qualifying value
    ([`choose_strongest`]). `None` if none qualifies."""
    allowed = [value for value, drop in drops.items() if drop <= max_drop + 1e-9]
    measured = {value: reinverted.get(value) for value in allowed if reinverted.get(value) is not None}
    if measured:
        lowest = min(measured.values())
        allowed = [value for value, success in measured.items() if success <= lowest + tolerance]
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


def data_fingerprint(*splits: Dataset | None) -> str:
    """One hash of the `datasets` fingerprints of the clean subset and the evaluation splits: which data a record
    was measured on, with no path in it (two local datasets in folders of the same name differ here)."""
    parts = [getattr(split, "_fingerprint", None) if split is not None else None for split in splits]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def config_seed(config: Any) -> int:
    """The seed a defense config runs with (`seed` of a training config, `anp_seed`, ...; 0 if none)."""
    for name in ("seed", "anp_seed"):
        if hasattr(config, name):
            return int(getattr(config, name))
    return 0


def apply_method(
    method: DefenseMethod,
    model: PreTrainedModel,
    extractor: Any,
    clean: Dataset,
    config: Any,
    validation: Dataset | None = None,
) -> tuple[DefenseOutcome, float]:
    """Run one defense on a copy of `model` and time it: the step `run_defense` and the benchmark share.
    Torch's global generator is seeded with the config's seed first, so a run is repeatable."""
    torch.manual_seed(config_seed(config))
    started = time.perf_counter()
    outcome = method.apply(model, extractor, clean, config, validation=validation)
    return outcome, time.perf_counter() - started


def _candidate_folder(candidates_dir: Path, knob: str, value: float) -> Path:
    return candidates_dir / f"{knob}-{value:g}"


def _main_process(config: Any) -> bool:
    if isinstance(config, TrainingArguments):
        return is_main_process(config)
    from accelerate import PartialState

    return PartialState().is_main_process


def _attack_spec_path(model_args: SuspectModelArguments) -> str | None:
    if model_args.attack_spec:
        return model_args.attack_spec
    candidate = Path(model_args.model) / ATTACK_SPEC_FILE
    return str(candidate) if candidate.is_file() else None


class BrokenModelError(RuntimeError):
    """What a defense produced is not a usable model (non-finite weights, or clean accuracy at chance level or far
    below the suspect's): nothing is written to the output folder."""


#: a defended model whose clean accuracy fell by more than this (absolute) is not published
DEFAULT_MAX_ACCURACY_DROP = 0.2


def check_publishable(
    model: torch.nn.Module,
    accuracy_before: float | None,
    accuracy_after: float | None,
    num_labels: int,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    where: str = "validation",
) -> None:
    """Refuse to publish a broken defended model.

    Raises:
        BrokenModelError: a weight or buffer is not finite; or the clean accuracy (`where`: validation, else test)
            fell to chance level (1 / `num_labels`) from above it, or by more than `max_accuracy_drop`.
    """
    broken = [name for name, tensor in model.state_dict().items()
              if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]  # fmt: skip
    if broken:
        raise BrokenModelError(
            f"the defended model has non-finite weights ({len(broken)} tensor{'s' if len(broken) > 1 else ''}, "
            f"first {broken[0]!r}): the defense diverged; nothing was written (try a smaller learning rate)"
        )
    if accuracy_before is None or accuracy_after is None:
        return
    chance = 1.0 / max(num_labels, 1)
    if accuracy_before > chance + 0.05 and accuracy_after <= chance + 0.02:
        raise BrokenModelError(
            f"the defended model's clean {where} accuracy fell to chance level ({100 * accuracy_after:.1f}% for "
            f"{num_labels} classes, from {100 * accuracy_before:.1f}%): nothing was written"
        )
    if accuracy_before - accuracy_after > max_accuracy_drop:
        raise BrokenModelError(
            f"the defended model's clean {where} accuracy fell by {100 * (accuracy_before - accuracy_after):.1f} "
            f"points ({100 * accuracy_before:.1f}% -> {100 * accuracy_after:.1f}%), more than max_accuracy_drop "
            f"({100 * max_accuracy_drop:g} points): nothing was written"
        )


def run_defense(
    data_args: DataArguments,
    clean_args: CleanDataArguments,
    model_args: SuspectModelArguments,
    config: Any,
    defense: str | None = None,
    output: OutputArguments | None = None,
    trigger: Trigger | None = None,
    retuning: RetuningConfig | None | str = "default",
    knob: str | None = None,
    require_validation: bool = False,
    reinversion: bool = True,
    relapse: RelapseConfig | None | str = "default",
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    suspect_measurements: SuspectMeasurements | None = None,
) -> DefenseResult:
    """Clean the suspect with one defense and measure it before and after.

    Args:
        data_args: where the data comes from.
        clean_args: the defender's clean subset and the evaluation / validation splits.
        model_args: the suspect (untrusted: safetensors only, no remote code unless asked).
        config: the defense's config (`DefenseConfig` for GN-FT, `FTConfig`, `NADConfig`, `TSBDConfig`, ...).
        defense: the method's name; default: the method whose config class `config` is.
        output: where to write, for a config that is not a `TrainingArguments` (training configs carry it).
        trigger: the attack's trigger object, to measure ASR with instead of rebuilding it from the attack spec
            (a `CallableTrigger` of your own: a spec never imports a function, since it comes with the untrusted
            suspect).
        retuning: settings of the retuning check, run on the suspect and on the defended model when the attack
            is known: `RetuningConfig()` seeded with the clean subset's seed by default; `None`: no check.
        knob: the setting a knob search tuned, for the record (default: the method's own knob).
        require_validation: refuse a dataset without the validation split before anything runs (a knob search
            needs it).
        reinversion: run the re-inversion check ([`hf_gnft.inversion.reinversion_check`]) on clean validation
            clips (on the clean subset when there is no validation split) and record it.
        relapse: settings of the relapse check ([`hf_gnft.lasting.relapse_check`]: clean fine-tunes of the defended
            model, then CA / ASR and, with `reinversion`, a re-inversion): `RelapseConfig()` seeded with the clean
            subset's seed by default; `None`: no check.
        max_accuracy_drop: a defended model whose clean validation accuracy (test accuracy without a validation
            split) fell by more than this, or to chance level, or whose weights are not finite, is not published:
            [`check_publishable`] raises [`BrokenModelError`] before anything is written.
        suspect_measurements: the suspect's own measurements from an earlier `run_defense` of the same suspect on
            the same data (`DefenseResult.suspect_measurements`), reused instead of measured again; a
            [`SuspectMeasurements`] of another suspect, data or retuning setting is an error.

    Writes to the output folder, atomically (everything goes to `OUTPUT_DIR.partial/`, renamed at the end):
    the cleaned model (safetensors), its feature extractor, `defense_metrics.json` (CA / ASR / RA before and
    after, DER, wall time, every setting, the suspect's provenance; no local paths), `defense_table.md`, the
    model card `README.md` and, when known, a copy of the attack spec. A finished folder is not replaced
    without `overwrite_output_dir`; a training method with checkpoints on resumes with
    `resume_from_checkpoint=True`. With `push_to_hub` (or `hub_dry_run`) the finished folder is then pushed
    (or listed).
    """
    method = get_defense(defense) if defense else method_for_config(config)
    check_config(method, config)
    output = output or OutputArguments.from_config(config)
    if not output.output_dir:
        raise ValueError("the defense needs an output folder (--output_dir)")
    started = time.perf_counter()
    output_dir = Path(output.output_dir)
    resume = None
    if method.trains:
        resume = resume_checkpoint(output_dir, config.resume_from_checkpoint)  # every rank resumes from it
    check_output_dir(output_dir, overwrite=output.overwrite_output_dir, resume=resume is not None)
    model, extractor, provenance = load_suspect_model(
        model_args.model,
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
        allow_pickle_weights=model_args.allow_pickle_weights,
        return_provenance=True,
    )
    spec_path = _attack_spec_path(model_args)
    spec = AttackSpec.from_json(spec_path) if spec_path else None
    if extractor.sampling_rate != data_args.sampling_rate:
        raise AudioError(
            f"the model takes {extractor.sampling_rate} Hz audio but the data is loaded at "
            f"{data_args.sampling_rate} Hz: pass --sampling_rate {extractor.sampling_rate}"
        )
    dataset = data_args.load(data_args.sampling_rate)
    required = (clean_args.clean_split, clean_args.eval_split)
    for split in (*required, clean_args.validation_split) if require_validation else required:
        if split not in dataset:
            raise CleanDataError(f"no split {split!r}; the dataset has {list(dataset)}")
    clean = clean_args.select(dataset[clean_args.clean_split])
    test = dataset[clean_args.eval_split]
    _check_labels(model, test)
    triggered_with = None
    if spec is not None:
        try:
            triggered_with = trigger or spec.build_trigger()
        except TriggerError as error:  # e.g. a callable trigger: a spec never imports code
            logger.warning("ASR is not measured: %s (pass trigger=... to run_defense)", error)
    measured = triggered_with is not None  # ASR / RA / DER / the retuning check need the trigger
    if retuning == "default":
        retuning = RetuningConfig(seed=clean_args.clean_seed)
    if retuning is not None and measured:  # an impossible check fails here, before any training
        select_retuning_rows(clean["label"], spec.target_label, retuning.num_triggered, retuning.num_clean,
                             retuning.seed)  # fmt: skip
    triggered = (
        make_triggered_eval_set(test, triggered_with, spec.target_label, num_proc=data_args.num_proc)
        if measured
        else None
    )
    target = spec.target_label if measured else None
    validation = dataset.get(clean_args.validation_split) if clean_args.validation_split else None
    fingerprint = data_fingerprint(clean, test, validation)
    key = json.dumps([provenance.to_dict(), fingerprint,
                      retuning.to_dict() if retuning is not None and measured else None,
                      spec.to_dict() if measured else None, trigger is not None], sort_keys=True, default=str)  # fmt: skip
    if suspect_measurements is not None and suspect_measurements.key != key:
        raise ValueError(
            "suspect_measurements were measured on another suspect, data or retuning setting than this run's"
        )
    if suspect_measurements is None:
        suspect_measurements = SuspectMeasurements(
            key,
            evaluate_backdoor(model, extractor, test, triggered, target),
            evaluate_backdoor(model, extractor, validation).clean_accuracy if validation else None,
        )
    before, validation_before = suspect_measurements.before, suspect_measurements.validation_before

    main_process = _main_process(config)
    push_to_hub, hub_dry_run = output.push_to_hub, output.hub_dry_run
    with staged_output_dir(output_dir, overwrite=output.overwrite_output_dir, resume=resume is not None,
                           main_process=main_process) as staged:  # fmt: skip
        if method.trains:
            # Checkpoints go to the staged folder; the Trainer never pushes by itself (the finished folder is
            # pushed below).
            saved = config.output_dir, config.push_to_hub, config.resume_from_checkpoint
            config.output_dir, config.push_to_hub, config.resume_from_checkpoint = (
                str(staged.path),
                False,
                resume,
            )
        try:
            outcome, seconds = apply_method(method, model, extractor, clean, config, validation)
        finally:
            if method.trains:
                config.output_dir, config.push_to_hub, config.resume_from_checkpoint = saved
        defended = outcome.model
        after = evaluate_backdoor(defended, extractor, test, triggered, target)
        validation_after = (
            evaluate_backdoor(defended, extractor, validation).clean_accuracy if validation else None
        )
        check_publishable(  # a broken model is never published, and the checks below would only waste time
            defended,
            validation_before if validation else before.clean_accuracy,
            validation_after if validation else after.clean_accuracy,
            int(getattr(defended.config, "num_labels", 0) or len(set(test["label"]))),
            max_accuracy_drop,
            where="validation" if validation else "test",
        )
        reinverted, detection = None, None
        check_clips = reinversion_clips(validation if validation is not None else clean)
        if reinversion:  # the suspect's inversion, once for the check and the relapse check's re-inversions
            if suspect_measurements.detection is None:
                suspect_measurements.detection = invert_classes(
                    model, extractor, check_clips, detection_settings()
                )
            detection = suspect_measurements.detection
            reinverted = reinversion_check(model, defended, extractor, check_clips, detection=detection)
            reinverted["clips_from"] = (
                clean_args.validation_split if validation is not None else "clean subset"
            )
        relapsed = None
        if relapse is not None:
            relapse = RelapseConfig(seed=clean_args.clean_seed) if relapse == "default" else relapse
            relapse.reinversion = relapse.reinversion and reinversion
            relapsed = relapse_check(defended, extractor, clean, test=test, triggered=triggered, target=target,
                                     suspect=model, clips=check_clips, detection=detection,
                                     config=relapse)  # fmt: skip
        retuned = None
        if retuning is not None and measured:
            if suspect_measurements.retuned_before is None:
                suspect_measurements.retuned_before = retuning_attack(
                    model, extractor, clean, triggered_with, target, test, triggered, retuning
                ).metrics.to_dict()
            retuned = {
                "before": suspect_measurements.retuned_before,
                "after": retuning_attack(defended, extractor, clean, triggered_with, target, test, triggered,
                                         retuning).metrics.to_dict(),
                "settings": retuning.to_dict(),
            }  # fmt: skip
        info = dict(outcome.info)
        log_history = info.pop("log_history", [])
        settings = config_settings(config)
        record = {
            "before": before.to_dict(),
            "after": after.to_dict(),
            "validation_accuracy": {"before": validation_before, "after": validation_after},
            "der": after.der_against(before) if measured else None,
            "defense": method.name,
            "defense_title": method.title,
            "paper": method.paper,
            "paper_url": method.paper_url,
            "knob": {"name": knob or method.knob, "value": settings.get(knob or method.knob)},
            "settings": settings,
            "train_seconds": round(seconds, 2),
            "total_seconds": round(time.perf_counter() - started, 2),
            "clean_rows": len(clean),
            "suspect": provenance.to_dict(),
            "model_type": getattr(defended.config, "model_type", None),
            "model_family": getattr(defended.config, "family", None),
            "resumed_from": Path(resume).name if resume else None,
            "attack": spec.to_dict() if spec else None,
            "clean_data": asdict(clean_args),
            "data_args": shareable_data_args(data_args),
            "data_fingerprint": fingerprint,
            "gn": {key: value for key, value in settings.items() if key.startswith("gn_")},
            "optim": {key: settings[key] for key in OPTIMIZER_KEYS if key in settings}
            if method.trains
            else {},
            "retuning": retuned,
            "reinversion": reinverted,
            "relapse": relapsed,
            "info": info,
            "log_history": log_history,
            "machine": machine_description(),
            "hf_gnft_version": __version__,
        }
        staged.publish = main_process
        if staged.publish:
            save_shareable_model(defended, extractor, staged.path)
            (staged.path / DEFENSE_METRICS_FILE).write_text(json.dumps(record, indent=2, default=str))
            (staged.path / DEFENSE_TABLE_FILE).write_text(
                format_before_after(before, after, record["der"]) + "\n"
            )
            if spec:
                spec.to_json(str(staged.path / ATTACK_SPEC_FILE))
            write_model_card(staged.path, record, output.hub_model_id or output_dir.name)
    logger.info(
        "Cleaned model (%s) in %s: CA %.1f%% -> %.1f%%%s",
        method.name,
        output_dir,
        100 * before.clean_accuracy,
        100 * after.clean_accuracy,
        f", ASR {100 * before.attack_success_rate:.1f}% -> {100 * after.attack_success_rate:.1f}%"
        if measured
        else "",
    )
    result = DefenseResult(output_dir=str(output_dir), before=before, after=after, record=record,
                           suspect_measurements=suspect_measurements)  # fmt: skip
    if main_process and (push_to_hub or hub_dry_run):
        result.push = push_output_dir(output_dir, output.hub_model_id, private=output.hub_private_repo,
                                      token=output.hub_token, dry_run=hub_dry_run)  # fmt: skip
    return result


def _finished_candidate(folder: Path, expected: dict[str, Any]) -> DefenseResult | None:
    """A candidate of an earlier, interrupted search to reuse: only one that finished with the same defense,
    every setting, the same suspect (its provenance: Hub commit or weights hash), the same data and the same
    clean subset."""
    path = folder / DEFENSE_METRICS_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if any(record.get(key) != value for key, value in expected.items()):
        return None
    return DefenseResult(
        str(folder), BackdoorMetrics(**record["before"]), BackdoorMetrics(**record["after"]), record
    )


def _with_knob(method: DefenseMethod, config: Any, knob: str, value: float) -> Any:
    candidate = copy.deepcopy(config)
    setattr(candidate, knob, method.typed_value(knob, value))
    return candidate


def search_knob(
    data_args: DataArguments,
    clean_args: CleanDataArguments,
    model_args: SuspectModelArguments,
    config: Any,
    search: DefenseArguments,
    output: OutputArguments | None = None,
) -> DefenseResult:
    """Run the defense once per value of `search.knob_grid` and publish the defender's choice ([`choose_candidate`]):
    among the values whose clean validation accuracy drops by at most `search.max_validation_drop`, the one least
    easily re-inverted towards a suspected target (with `reinversion_check`), then the strongest. It goes to the
    output folder with `knob_search.json` (every candidate's validation drop and re-inversion success). The
    trigger, the test set and ASR play no part in the choice.

    Candidates go to `OUTPUT_DIR.candidates/<knob>-<value>`; a search run again after an interruption reuses a
    candidate only if it finished with the same defense, settings, suspect, data and clean subset. The chosen
    one is published (and pushed, with `push_to_hub`) with its card.

    Raises `CleanDataError` when there is no validation split, or when no candidate qualifies (the candidates
    are then left in `OUTPUT_DIR.candidates/` for inspection; nothing is written to the output folder).
    """
    search = search.for_config(config)
    method = search.method
    if not search.knob_grid:
        raise ValueError("a knob search needs --knob_grid (or --learning_rate_grid)")
    if not clean_args.validation_split:
        raise CleanDataError("a knob search needs a clean validation split (--validation_split)")
    knob = search.knob_name
    check_setting(method, knob, "--knob")
    output = output or OutputArguments.from_config(config)
    output_dir = Path(output.output_dir)
    check_output_dir(output_dir, overwrite=output.overwrite_output_dir)
    candidates_dir = output_dir.parent / f"{output_dir.name}.candidates"
    dataset = data_args.load(data_args.sampling_rate)
    for split in (clean_args.clean_split, clean_args.eval_split, clean_args.validation_split):
        if split not in dataset:  # before any candidate runs
            raise CleanDataError(
                f"no split {split!r} (a knob search needs it); the dataset has {list(dataset)}"
            )
    fingerprint = data_fingerprint(
        clean_args.select(dataset[clean_args.clean_split]),
        dataset[clean_args.eval_split],
        dataset[clean_args.validation_split],
    )
    provenance = inspect_checkpoint(
        model_args.model,
        revision=model_args.model_revision,
        allow_pickle_weights=model_args.allow_pickle_weights,
    )
    grid = sorted(set(float(v) for v in search.knob_grid))
    results: dict[float, DefenseResult] = {}
    for value in grid:
        folder = _candidate_folder(candidates_dir, knob, value)
        candidate = _with_knob(method, config, knob, value)
        candidate_output = dataclasses.replace(output, output_dir=str(folder), overwrite_output_dir=True,
                                               push_to_hub=False, hub_dry_run=False)  # fmt: skip
        if method.trains:
            candidate.output_dir, candidate.overwrite_output_dir = str(folder), True
            candidate.push_to_hub, candidate.hub_dry_run = False, False
        expected = {
            "defense": method.name,
            "settings": config_settings(candidate),
            "suspect": provenance.to_dict(),
            "clean_data": asdict(clean_args),
            "data_args": json.loads(json.dumps(shareable_data_args(data_args), default=str)),
            "data_fingerprint": fingerprint,
        }
        finished = _finished_candidate(folder, expected)
        if finished is not None:
            logger.info("Knob search: reusing the finished run with %s=%g", knob, value)
            results[value] = finished
            continue
        if method.trains:
            resumable = (
                get_last_checkpoint(str(partial_dir(folder))) if partial_dir(folder).is_dir() else None
            )
            candidate.resume_from_checkpoint = resumable if config.resume_from_checkpoint else None
        logger.info("Knob search: running %s with %s=%g", method.name, knob, value)
        results[value] = run_defense(data_args, clean_args, model_args, candidate, defense=method.name,
                                     output=candidate_output, retuning="default" if search.retuning_check else None,
                                     knob=knob, require_validation=True,
                                     reinversion=search.reinversion_check,
                                     relapse="default" if search.relapse_check else None,
                                     max_accuracy_drop=search.max_accuracy_drop)  # fmt: skip
    drops = {value: validation_drop(result.record) for value, result in results.items()}
    reinverted = {value: record_reinversion(result.record) for value, result in results.items()}
    chosen = choose_candidate(drops, reinverted, search.max_validation_drop, search.larger_is_stronger)
    summary = {
        "knob": knob,
        "grid": grid,
        "larger_is_stronger": search.larger_is_stronger,
        "max_validation_drop": search.max_validation_drop,
        "validation_drop": {f"{value:g}": drop for value, drop in drops.items()},
        "reinversion_success": {f"{value:g}": success for value, success in reinverted.items()},
        "chosen": chosen,
    }
    main_process = _main_process(config)
    if main_process:
        atomic_write_text(candidates_dir / KNOB_SEARCH_FILE, json.dumps(summary, indent=2))
    if chosen is None:
        raise CleanDataError(
            f"no {knob} in {grid} kept the clean validation accuracy within {search.max_validation_drop:.3f} "
            f"(drops: {summary['validation_drop']}); the candidates are in {candidates_dir}"
        )
    logger.info("Knob search: chose %s=%g (validation drops %s)", knob, chosen, summary["validation_drop"])
    result = results[chosen]
    result.output_dir = str(output_dir)
    result.record["knob_search"] = summary
    with staged_output_dir(
        output_dir, overwrite=output.overwrite_output_dir, main_process=main_process
    ) as staged:
        if main_process:
            shutil.copytree(_candidate_folder(candidates_dir, knob, chosen), staged.path, dirs_exist_ok=True)
            (staged.path / KNOB_SEARCH_FILE).write_text(json.dumps(summary, indent=2))
            (staged.path / DEFENSE_METRICS_FILE).write_text(json.dumps(result.record, indent=2, default=str))
            write_model_card(staged.path, result.record, output.hub_model_id or output_dir.name)
    if main_process and not search.keep_candidates:
        shutil.rmtree(candidates_dir, ignore_errors=True)
    if main_process and (output.push_to_hub or output.hub_dry_run):
        result.push = push_output_dir(output_dir, output.hub_model_id, private=output.hub_private_repo,
                                      token=output.hub_token, dry_run=output.hub_dry_run)  # fmt: skip
    return result


def defend(
    data_args: DataArguments,
    clean_args: CleanDataArguments,
    model_args: SuspectModelArguments,
    config: Any,
    defense_args: DefenseArguments | None = None,
    output: OutputArguments | None = None,
) -> DefenseResult:
    """`run_defense`, or `search_knob` when `defense_args` has a knob grid: what `hf-gnft defend` runs."""
    defense_args = (defense_args or DefenseArguments()).for_config(config)
    if defense_args.knob_grid:
        return search_knob(data_args, clean_args, model_args, config, defense_args, output)
    return run_defense(data_args, clean_args, model_args, config, defense=defense_args.defense, output=output,
                       retuning="default" if defense_args.retuning_check else None,
                       reinversion=defense_args.reinversion_check,
                       relapse="default" if defense_args.relapse_check else None,
                       max_accuracy_drop=defense_args.max_accuracy_drop)  # fmt: skip
