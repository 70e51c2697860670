"""The defense benchmark: models × attacks × defenses × knob values × seeds, on one clean budget.

The protocol is the defender's. Each defense's main knob (learning rate, pruning tolerance, threshold, u)
is run over a small grid; per (model, attack, defense) the strongest value whose mean clean *validation*
accuracy drops by at most `max_validation_drop` is chosen, never looking at the trigger. The whole grid is
kept for CA-vs-ASR curves. Each backdoored model is trained once and cached; every finished cell is one
line of `results.jsonl`, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from filelock import FileLock

from .attack import (
    ATTACK_SPEC_FILE,
    METRICS_FILE,
    AttackArguments,
    ModelArguments,
    run_attack,
    training_budget_suffix,
)
from .data.arguments import CleanDataArguments, DataArguments
from .defenses import DEFENSE_METHODS, DefenseMethod, get_benchmark_defense
from .executors import (
    ExecutorError,
    ExecutorSettings,
    as_completed,
    describe_task_error,
    pin_threads,
    run_remote,
    start_ray,
)
from .inversion import detection_settings, invert_classes, reinversion_check, reinversion_clips
from .lasting import LastingCheckError, RelapseConfig, interpolation_curve, relapse_check
from .metrics import BackdoorMetrics
from .models import load_suspect_model
from .neurons import UnsupportedModelError
from .outputs import atomic_write_text, machine_description
from .pipeline import apply_method, choose_candidate, record_reinversion, validation_drop
from .poison import AttackSpec, make_triggered_eval_set
from .retuning import RetuningConfig, retuning_attack
from .settings import check_numeric_settings
from .trainer_args import KeywordTrainingArguments
from .training import evaluate_backdoor
from .triggers import Trigger, TriggerError, reference_triggers, trigger_from_config

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
#: the `trigger` of the cells on a model trained on the same data without poisoning (`clean_models: true`)
CLEAN = "clean"
#: how the tables show a defense that refused a model (`UnsupportedModelError`: it lacks the layers the defense needs)
UNSUPPORTED = "unsupported"
RETUNED_FILE = "retuned.json"
BEFORE_FILE = "before.json"


class BenchmarkSuspectError(RuntimeError):
    """A backdoored model the benchmark trained (or found cached) is too weak to defend."""


class BenchmarkConfigError(ValueError):
    """The grid file is not a valid benchmark configuration."""


@dataclass
class DefenseEntry:
    """One row of the grid's `defenses:` mapping.

    Args:
        method: a key of `DEFENSE_METHODS` (defaults to the entry's own name).
        settings: fixed settings of the defense's config.
        grid: values of the knob; the protocol picks one from clean validation data.
        knob: the config field the grid sets (default: the method's own knob, e.g. fine-pruning's accuracy
            tolerance); another field, such as `learning_rate`, tunes that instead.
        larger_is_stronger: whether a larger knob value is the stronger defense (default: the method's
            for its own knob, else True, as for a learning rate).
        suspects: run the entry on these suspects only (`MODEL/TRIGGER`, or `MODEL/clean` for the model trained
            without a trigger), e.g. a costly ablation on a few suspects; default: every suspect of the grid.
    """

    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    grid: list[float] = field(default_factory=list)
    knob: str | None = None
    larger_is_stronger: bool | None = None
    suspects: list[str] | None = None

    def runs_on(self, model: str, trigger: Any) -> bool:
        """Whether the entry has cells on the suspect (model, trigger)."""
        return self.suspects is None or suspect_label(model, trigger) in self.suspects

    @property
    def defense(self) -> DefenseMethod:
        return get_benchmark_defense(self.method)

    @property
    def knob_name(self) -> str:
        return self.knob or self.defense.knob

    @property
    def stronger_when_larger(self) -> bool:
        if self.larger_is_stronger is not None:
            return self.larger_is_stronger
        return self.defense.stronger_when_larger(self.knob_name)


@dataclass
class BenchmarkConfig:
    """The benchmark grid (read from YAML with `BenchmarkConfig.from_yaml`).

    Args:
        output_dir: where suspects, results, tables and plots go.
        models: model names for `hf-gnft attack --model` (tiny configs or checkpoints).
        triggers: built-in trigger names, or trigger specs (mappings with `type`).
        defenses: name -> `DefenseEntry` fields (`method`, `settings`, `grid`).
        seeds: defense seeds (clean subset and training order); data-free defenses run the first only.
        clean_fraction: the defender's clean budget, as a fraction of the training split.
        max_validation_drop: the protocol's limit on the clean validation accuracy drop.
        reference: the defense whose wall time and memory are the cost unit (plain FT).
        data: `DataArguments` fields (the synthetic corpus by default).
        attack: `AttackArguments` fields other than the trigger (poison rate, target ...).
        attack_epochs: epochs of the backdoored model's training.
        attack_training: other `KeywordTrainingArguments` fields of that training (e.g. a learning rate for a
            pretrained model).
        attack_training_by_model: model name -> `KeywordTrainingArguments` fields for that model's suspects only,
            over `attack_training` (a family that needs a longer budget). Its suspects are cached in folders of
            their own named after the budget, `<model>-<trigger>-learning_rate0.004-num_train_epochs30`, the
            names `benchmarks/attack_table.py` gives its cells, so a suspect it trained is reused.
        suspects_dir: where backdoored models are cached (default `output_dir/suspects`).
        retuning: run the retuning check (`hf_gnft.retuning_attack`: 5 triggered clips with the true trigger and
            target mixed into the cell's clean subset) on every defended model and on the suspect, and report the
            ASR after it ("post-retuning ASR"). Evaluation only; the knob's choice never sees it.
        retuning_settings: `RetuningConfig` fields other than the seed (the cell's seed is used). Cells finished
            before `retuning` was switched on are not run again; the column then averages the cells that have it.
        reinversion: run the re-inversion check (`hf_gnft.inversion.reinversion_check`, clean validation clips
            only) on every defended model; the knob's choice then prefers, within the validation drop, the value
            least easily re-inverted (`hf_gnft.pipeline.choose_candidate`), as `hf-gnft defend` does.
        relapse: run the relapse check (`hf_gnft.lasting.relapse_check`: the FT defense on the cell's clean subset
            alone, at its learning rate and at 5x it, then CA / ASR and a re-inversion on clean validation clips) on
            every defended model. Its re-inversion is clean data only: with it, the knob's choice prefers the value
            least re-invertible before *and* after the relapse fine-tune.
        relapse_settings: `RelapseConfig` fields other than the seed (the cell's seed is used).
        retuning_reference: with `retuning`, also retune the model trained without poisoning (the same family and
            data; trained once when missing) with each suspect's trigger and target, per seed: the ASR a model that
            never had the backdoor reaches after the same retuning, the reference the column is read against.
        interpolation_points: with a value >= 2, CA and ASR at that many points on the line from the suspect's
            weights to each defended model's (`hf_gnft.lasting.interpolation_curve`; evaluation only), plotted in
            `interpolation.png` for the chosen cells.
        clean_models: also run every defense on each model trained on the same data without poisoning (trigger
            name `"clean"` in the results; 3 seeds like the rest): what a defense costs a model that had no
            backdoor, reported in a table of its own (CA and validation accuracy before and after).
        min_suspect_accuracy: the clean test accuracy a backdoored model must reach to be defended (0 turns the
            check off). A suspect whose training failed would make every cell on it meaningless, so the run
            stops on it and names it; move it aside and the next run trains it again.
        executor: where the tasks run: `"serial"` (this process) or `"ray"` (`hf_gnft.executors`; the command
            line's `--executor` overrides it).
        resources: with Ray, what each task asks for: `suspect` and `cell` mappings of `cpus` and `gpus`, and
            `threads` (torch threads per task); see [`ExecutorSettings`].
    """

    output_dir: str = "outputs/benchmark"
    models: list[str] = field(default_factory=lambda: ["tiny-wav2vec2", "tiny-hubert"])
    triggers: list[Any] = field(default_factory=lambda: ["noise_burst", "tone", "pbsm", "style"])
    defenses: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    clean_fraction: float = 0.05
    max_validation_drop: float = 0.02
    reference: str = "ft"
    data: dict[str, Any] = field(default_factory=dict)
    attack: dict[str, Any] = field(default_factory=dict)
    attack_epochs: float = 15.0
    attack_training: dict[str, Any] = field(default_factory=dict)
    attack_training_by_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    suspects_dir: str | None = None
    retuning: bool = False
    retuning_settings: dict[str, Any] = field(default_factory=dict)
    reinversion: bool = False
    relapse: bool = False
    relapse_settings: dict[str, Any] = field(default_factory=dict)
    retuning_reference: bool = False
    interpolation_points: int = 0
    clean_models: bool = False
    min_suspect_accuracy: float = 0.0
    executor: str = "serial"
    resources: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_numeric_settings(self, error=BenchmarkConfigError)
        try:  # an unknown executor or bad resources fail here
            ExecutorSettings.from_grid(self.executor, self.resources)
        except ExecutorError as error:
            raise BenchmarkConfigError(str(error)) from None
        if not self.defenses:
            raise BenchmarkConfigError("the grid names no defenses")
        entries = {}
        for name, entry in self.defenses.items():
            entry = dict(entry or {})
            unknown = sorted(set(entry) - {f.name for f in fields(DefenseEntry)})
            if unknown:
                raise BenchmarkConfigError(f"defense {name!r}: unknown keys {', '.join(unknown)}")
            parsed = DefenseEntry(method=entry.get("method", name), settings=entry.get("settings") or {},
                                  grid=list(entry.get("grid") or []), knob=entry.get("knob"),
                                  larger_is_stronger=entry.get("larger_is_stronger"),
                                  suspects=entry.get("suspects"))  # fmt: skip
            method = parsed.defense  # unknown method names fail here
            parsed.settings.pop("output_dir", None)
            knob = parsed.knob_name
            if knob not in {f.name for f in fields(method.config_class)}:
                raise BenchmarkConfigError(
                    f"defense {name!r}: {method.config_class.__name__} has no field {knob!r} to tune"
                )
            trial = {**parsed.settings, knob: parsed.grid[0]} if parsed.grid else parsed.settings
            config = method.make_config(**trial)  # unknown or invalid settings fail before any training
            if not parsed.grid:
                parsed.grid = [getattr(config, knob)]
            entries[name] = parsed
        self.defenses = entries
        if self.reference not in self.defenses:
            raise BenchmarkConfigError(f"the cost reference {self.reference!r} is not among the defenses")
        try:
            RelapseConfig(**{**self.relapse_settings, "seed": 0})
        except (TypeError, LastingCheckError) as error:
            raise BenchmarkConfigError(f"relapse_settings: {error}") from None
        if self.retuning_reference and not self.retuning:
            raise BenchmarkConfigError(
                "retuning_reference is the reference of the retuning check: set retuning too"
            )
        if not self.seeds or not self.models or not self.triggers:
            raise BenchmarkConfigError("models, triggers and seeds must each name at least one")
        unknown = sorted(set(self.data) - {f.name for f in fields(DataArguments)})
        if unknown:
            raise BenchmarkConfigError(f"data: unknown keys {', '.join(unknown)}")
        unknown = sorted(set(self.attack) - ({f.name for f in fields(AttackArguments)} - {"trigger"}))
        if unknown:
            raise BenchmarkConfigError(
                f"attack: unknown keys (or a trigger: use `triggers`) {', '.join(unknown)}"
            )
        not_in_grid = sorted(set(self.attack_training_by_model) - set(self.models))
        if not_in_grid:
            raise BenchmarkConfigError(
                f"attack_training_by_model: {not_in_grid[0]!r} is not one of the grid's models ({', '.join(self.models)})"
            )
        trainings = {"attack_training": self.attack_training}
        trainings.update((f"attack_training_by_model[{model!r}]", settings or {})
                         for model, settings in self.attack_training_by_model.items())  # fmt: skip
        for name, settings in trainings.items():
            unknown = sorted(set(settings) - {f.name for f in fields(KeywordTrainingArguments)})
            if unknown:
                raise BenchmarkConfigError(f"{name}: unknown keys {', '.join(unknown)}")
        for trigger in self.triggers:
            if trigger == CLEAN:
                raise BenchmarkConfigError(
                    f"{CLEAN!r} is not a trigger: set `clean_models: true` to defend models trained without one"
                )
            grid_trigger(trigger)  # unknown trigger names fail before any training
        suspects = {
            suspect_label(model, trigger) for model in self.models for trigger in self.suspect_triggers
        }
        for name, entry in self.defenses.items():
            if entry.suspects is None:
                continue
            if isinstance(entry.suspects, str) or not entry.suspects:
                raise BenchmarkConfigError(f"defense {name!r}: suspects must list at least one MODEL/TRIGGER")
            unknown = sorted(set(entry.suspects) - suspects)
            if unknown:
                raise BenchmarkConfigError(
                    f"defense {name!r}: suspects {', '.join(map(repr, unknown))} are not in the grid; it has: "
                    f"{', '.join(sorted(suspects))}"
                )
            if name == self.reference:
                raise BenchmarkConfigError(
                    f"defense {name!r} is the cost reference: it must run on every suspect"
                )

    @property
    def suspect_triggers(self) -> list[Any]:
        """The triggers each model is trained with: the grid's, then `CLEAN` with `clean_models`."""
        return [*self.triggers, *([CLEAN] if self.clean_models else [])]

    @classmethod
    def from_yaml(cls, path: str | Path) -> BenchmarkConfig:
        """Read a grid file; unknown keys are an error."""
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise BenchmarkConfigError(f"{path} must hold a mapping")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise BenchmarkConfigError(f"{path}: unknown keys {', '.join(unknown)}")
        return cls(**values)


def grid_trigger(trigger: Any) -> Trigger:
    """A grid's trigger: a type name with its defaults (`noise_burst`), a spec (a mapping with `type`), or the name of
    one of the attack table's reference triggers that is not a type (`near_ultrasonic_tone`; see
    `hf_gnft.triggers.reference_triggers`)."""
    try:
        return trigger_from_config(trigger)
    except TriggerError as error:
        references = reference_triggers()  # at 16 kHz, the corpus's rate
        if not isinstance(trigger, str):
            raise
        if trigger in references:
            return references[trigger]
        raise TriggerError(f"{error}; or one of the reference triggers: {', '.join(references)}") from None


def suspect_label(model: str, trigger: Any) -> str:
    """A suspect as `--only` and a grid entry's `suspects` name it: `MODEL/TRIGGER` (`MODEL/clean`)."""
    return f"{model}/{trigger_name(trigger)}"


def trigger_name(trigger: Any) -> str:
    """A built-in name as it is; a trigger spec as its type and a short hash of its settings."""
    if isinstance(trigger, str):
        return trigger
    built = grid_trigger(trigger)
    digest = hashlib.sha256(json.dumps(built.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{built.name}-{digest}"


def _current_peak_mib() -> float | None:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else None


@contextmanager
def peak_memory():
    """Measures the peak memory of the block: CUDA allocations on a GPU, else the process's peak resident
    memory (Linux: reset through /proc/self/clear_refs). Yields a dict whose "mib" is set at the end."""
    result: dict[str, float | None] = {"mib": None}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
    try:
        yield result
    finally:
        result["mib"] = _current_peak_mib()


class Benchmark:
    """Runs a `BenchmarkConfig`, cell by cell, appending to `results.jsonl`."""

    def __init__(self, config: BenchmarkConfig) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.suspects_dir = Path(config.suspects_dir) if config.suspects_dir else self.output_dir / "suspects"
        self.results_path = self.output_dir / RESULTS_FILE
        self.data_args = DataArguments(**config.data)
        self._dataset = None
        self._triggered: dict[str, Any] = {}
        self._detections: dict[str, Any] = {}
        self._finished: list[dict] = []

    # ------------------------------------------------------------------------------------------- data

    @property
    def dataset(self):
        if self._dataset is None:
            self._dataset = self.data_args.load(self.data_args.sampling_rate)
        return self._dataset

    def rows(self) -> list[dict]:
        """The finished cells. A last line cut short by a kill is dropped (and removed from the file), so that
        its cell runs again; any other unreadable line is an error."""
        if not self.results_path.exists():
            return []
        text = self.results_path.read_text()
        lines = text.splitlines()
        rows = []
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if index == len(lines) - 1 and not text.endswith("\n"):
                    logger.warning(
                        "Dropping the unfinished last line of %s: its cell runs again", self.results_path
                    )
                    atomic_write_text(self.results_path, "".join(f"{kept}\n" for kept in lines[:-1]))
                    break
                raise
        return rows

    def cells(self) -> list[tuple[str, Any, str, float, int]]:
        """Every (model, trigger, defense, knob value, seed) of the grid, in run order."""
        out = []
        for model in self.config.models:
            for trigger in self.config.suspect_triggers:
                for name, entry in self.config.defenses.items():
                    if not entry.runs_on(model, trigger):
                        continue
                    seeds = self.config.seeds if entry.defense.uses_data else self.config.seeds[:1]
                    for value in entry.grid:
                        for seed in seeds:
                            out.append((model, trigger, name, float(value), int(seed)))
        return out

    def select(self, only: Sequence[str]) -> list[tuple[str, Any, str, float, int]]:
        """The grid's cells on the suspects `only` names, in run order: each entry is `MODEL` (all its suspects) or
        `MODEL/TRIGGER` (a trigger's name as the tables show it, or `clean` for the model trained without one).

        Raises:
            BenchmarkConfigError: an entry names no model or suspect of the grid.
        """
        cells = self.cells()
        suspects = {(model, trigger_name(trigger)) for model, trigger, *_ in cells}
        wanted = set()
        for entry in only:
            model, _, trigger = entry.partition("/")
            matched = {s for s in suspects if s[0] == model and (not trigger or s[1] == trigger)}
            if not matched:
                names = ", ".join(sorted(f"{m}/{t}" for m, t in suspects))
                raise BenchmarkConfigError(f"--only {entry!r} names no suspect of the grid; it has: {names}")
            wanted |= matched
        return [cell for cell in cells if (cell[0], trigger_name(cell[1])) in wanted]

    @staticmethod
    def key(model: str, trigger: Any, defense: str, value: float, seed: int) -> tuple:
        return (model, trigger_name(trigger), defense, float(value), int(seed))

    # -------------------------------------------------------------------------------------- suspects

    def suspect(self, model: str, trigger: Any) -> Path:
        """The backdoored model for (model, trigger): trained once, then read from the cache."""
        budget = self.config.attack_training_by_model.get(model) or {}
        path = (
            self.suspects_dir / f"{Path(model).name}-{trigger_name(trigger)}{training_budget_suffix(budget)}"
        )
        if not (path / METRICS_FILE).exists():
            kind = "clean" if trigger == CLEAN else "backdoored"
            logger.info("Training the %s %s (%s)", kind, model, trigger_name(trigger))
            print(f"training the {kind} {model} ({trigger_name(trigger)}) ...", flush=True)
            attack = (
                None
                if trigger == CLEAN
                else AttackArguments(trigger=grid_trigger(trigger).to_dict(), **self.config.attack)
            )
            run_attack(
                self.data_args,
                attack,
                ModelArguments(model=model),
                KeywordTrainingArguments(
                    **{
                        "num_train_epochs": self.config.attack_epochs,
                        "seed": 42,
                        "disable_tqdm": True,
                        **self.config.attack_training,
                        **budget,
                        "output_dir": str(path),
                    }
                ),  # fmt: skip
            )
        return path

    def triggered(self, suspect: Path):
        """The suspect's attack spec and triggered test set; `(None, None)` for a model trained without poisoning."""
        if not (suspect / ATTACK_SPEC_FILE).exists():
            return None, None
        spec = AttackSpec.from_json(str(suspect / ATTACK_SPEC_FILE))
        name = suspect.name
        if name not in self._triggered:
            test = self.dataset[self.data_args.test_split]
            self._triggered[name] = make_triggered_eval_set(test, spec.build_trigger(), spec.target_label)
        return spec, self._triggered[name]

    def before(self, suspect: Path) -> dict:
        """CA / ASR / RA and clean validation accuracy of the suspect, measured once and cached."""
        path = suspect / BEFORE_FILE
        if path.exists():
            record = json.loads(path.read_text())
        else:
            model, extractor = load_suspect_model(str(suspect))
            spec, triggered = self.triggered(suspect)
            metrics = evaluate_backdoor(model, extractor, self.dataset[self.data_args.test_split], triggered,
                                        spec.target_label if spec else None)  # fmt: skip
            record = {**metrics.to_dict(), "validation_accuracy": self._validation_accuracy(model, extractor)}
            atomic_write_text(path, json.dumps(record, indent=2))
        floor = self.config.min_suspect_accuracy
        if record["clean_accuracy"] < floor:
            raise BenchmarkSuspectError(
                f"the backdoored model {suspect} has clean test accuracy {100 * record['clean_accuracy']:.1f}%, "
                f"below the grid's min_suspect_accuracy {100 * floor:.1f}%: its training failed, and every cell on "
                f"it would be meaningless. Move {suspect} aside (the next run trains it again) or lower the floor."
            )
        return record

    def check_same_suspect(self, model_name: str, trigger: Any, suspect: Path, before: dict) -> None:
        """The finished cells of (model, trigger) must have been measured on this very suspect. A suspect trained
        again (its cache lost with a session's outputs) is not bit-identical across machines and thread counts, so
        its cells would not be comparable with the old ones; the run stops before mixing them."""
        name = trigger_name(trigger)
        for row in self._finished:
            if row["model"] != model_name or row["trigger"] != name or "before" not in row:
                continue
            recorded = row["before"]
            same = all(
                recorded.get(key) == before.get(key)  # both None on a clean model
                or (
                    None not in (recorded.get(key), before.get(key))
                    and math.isclose(recorded[key], before[key], abs_tol=1e-9)
                )
                for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy")
            )
            if not same:
                raise BenchmarkSuspectError(
                    f"the finished cells of {model_name} / {name} in {self.results_path} were measured on a "
                    f"suspect with clean accuracy {recorded['clean_accuracy']}, ASR {recorded['attack_success_rate']}"
                    f", but {suspect} now measures {before['clean_accuracy']}, {before['attack_success_rate']}: "
                    "it was trained again, and a retrained suspect is not bit-identical, so the new cells would "
                    f"not be comparable. Restore the original suspect in {self.suspects_dir}, or move this "
                    "suspect's rows out of the results file to measure them all again."
                )
            return

    def retuned(self, model, extractor, suspect: Path, clean, seed: int) -> dict:
        """CA / ASR / RA of `model` after the retuning check on the cell's clean subset (seeded by the cell)."""
        spec, triggered = self.triggered(suspect)
        config = RetuningConfig(**{**self.config.retuning_settings, "seed": seed})
        result = retuning_attack(model, extractor, clean, spec.build_trigger(), spec.target_label,
                                 self.dataset[self.data_args.test_split], triggered, config)  # fmt: skip
        return result.metrics.to_dict()

    def _cached_retuning(self, path: Path, key: str, measure) -> dict:
        """`measure()` once per `key` in the JSON cache `path`. The cache is locked while it is read, measured and
        written: tasks running at once (the Ray executor) share a clean model's cache, and a measurement is made
        once, not lost to a concurrent write."""
        with FileLock(str(path) + ".lock"):
            cached = json.loads(path.read_text()) if path.exists() else {}
            if key not in cached:
                cached[key] = measure()
                atomic_write_text(path, json.dumps(cached, indent=2))
        return cached[key]

    def retuned_suspect(self, suspect: Path, clean, seed: int) -> dict:
        """The retuning check on the suspect itself for a cell's clean subset, measured once and cached."""
        key = json.dumps({"clean_fraction": self.config.clean_fraction, "seed": seed,
                          **self.config.retuning_settings}, sort_keys=True)  # fmt: skip

        def measure() -> dict:
            model, extractor = load_suspect_model(str(suspect))
            return self.retuned(model, extractor, suspect, clean, seed)

        return self._cached_retuning(suspect / RETUNED_FILE, key, measure)

    def retuned_reference(self, model_name: str, suspect: Path, clean, seed: int) -> dict:
        """The retuning check, with `suspect`'s trigger and target, on the model of the same family trained without
        poisoning (trained once when missing): measured once per suspect and clean subset, cached in the clean
        model's folder."""
        reference = self.suspect(model_name, CLEAN)
        key = json.dumps({"suspect": suspect.name, "clean_fraction": self.config.clean_fraction, "seed": seed,
                          **self.config.retuning_settings}, sort_keys=True)  # fmt: skip

        def measure() -> dict:
            model, extractor = load_suspect_model(str(reference))
            return self.retuned(model, extractor, suspect, clean, seed)

        return self._cached_retuning(reference / RETUNED_FILE, key, measure)

    def detection(self, suspect: Path, model, extractor):
        """The suspect's inversion of every class on the re-inversion clips, measured once per suspect."""
        if suspect.name not in self._detections:
            clips = reinversion_clips(self.dataset["validation"])
            self._detections[suspect.name] = invert_classes(model, extractor, clips, detection_settings())
        return self._detections[suspect.name]

    def reinverted(self, suspect: Path, model, defended, extractor) -> dict:
        """The re-inversion check of a defended model on the clean validation split; the suspect's own inversion
        is measured once per suspect."""
        clips = reinversion_clips(self.dataset["validation"])
        self.detection(suspect, model, extractor)
        record = reinversion_check(
            model, defended, extractor, clips, detection=self._detections[suspect.name]
        )
        return {
            key: record[key] for key in ("targets", "defended", "max_success_before", "max_success_after")
        }

    def clean_subset(self, seed: int):
        """The defender's clean subset of the training split for a cell's seed."""
        return CleanDataArguments(clean_fraction=self.config.clean_fraction, clean_seed=seed).select(
            self.dataset[self.data_args.train_split]
        )

    def measure_suspect(self, model_name: str, trigger: Any, seeds: list[int]) -> dict:
        """What is measured once per suspect before its cells: the suspect's numbers (`before`), the check that
        finished cells were measured on this very suspect, its inversion of every class (when the grid runs the
        re-inversion or relapse check) and the retuning of the suspect and of its clean reference for each of
        `seeds`. The serial run measures each lazily; the Ray executor runs this as the suspect's task, so that
        its cells, running at once, find it done.

        Returns:
            `{"detection": ...}`: the suspect's inversion (or `None`), which the cells' tasks receive.
        """
        suspect = self.suspect(model_name, trigger)
        before = self.before(suspect)
        self.check_same_suspect(model_name, trigger, suspect, before)
        detection = None
        if self.config.reinversion or self.config.relapse:
            model, extractor = load_suspect_model(str(suspect))
            detection = self.detection(suspect, model, extractor)
        spec, _ = self.triggered(suspect)
        if self.config.retuning and spec is not None:
            for seed in seeds:
                clean = self.clean_subset(seed)
                self.retuned_suspect(suspect, clean, seed)
                if self.config.retuning_reference:
                    self.retuned_reference(model_name, suspect, clean, seed)
        return {"detection": detection}

    def _validation_accuracy(self, model, extractor) -> float:
        if "validation" not in self.dataset:
            raise BenchmarkConfigError("the benchmark's protocol needs a clean validation split")
        return evaluate_backdoor(model, extractor, self.dataset["validation"]).clean_accuracy

    # ------------------------------------------------------------------------------------------- cells

    def run_cell(self, model_name: str, trigger: Any, defense: str, value: float, seed: int) -> dict:
        entry = self.config.defenses[defense]
        method = entry.defense
        suspect = self.suspect(model_name, trigger)
        before = self.before(suspect)
        self.check_same_suspect(model_name, trigger, suspect, before)
        spec, triggered = self.triggered(suspect)
        model, extractor = load_suspect_model(str(suspect))
        clean = self.clean_subset(seed)
        settings = {**entry.settings, entry.knob_name: method.typed_value(entry.knob_name, value)}
        config_fields = {f.name for f in fields(method.config_class)}
        for seed_field in ("seed", "anp_seed"):
            if seed_field in config_fields:
                settings[seed_field] = seed
        if (
            "oracle_trigger" in config_fields and spec is not None
        ):  # evaluation only: the attack's own trigger
            settings.update(oracle_trigger=spec.build_trigger().to_dict(), oracle_target=spec.target_label)
        with tempfile.TemporaryDirectory(prefix="hf-gnft-bench-") as scratch:
            if "output_dir" in config_fields:
                settings["output_dir"] = scratch
            config = method.make_config(**settings)
            with peak_memory() as peak:  # the pipeline's own step: what `hf-gnft defend` runs for this cell
                outcome, seconds = apply_method(
                    method, model, extractor, clean, config, self.dataset["validation"]
                )
        after = evaluate_backdoor(outcome.model, extractor, self.dataset[self.data_args.test_split], triggered,
                                  spec.target_label if spec else None)  # fmt: skip
        before_metrics = BackdoorMetrics(**{k: before[k] for k in ("clean_accuracy", "attack_success_rate",
                                                                   "robust_accuracy", "num_clean", "num_triggered")})  # fmt: skip
        for private in ("output_dir", "oracle_trigger", "oracle_target"):
            settings.pop(private, None)
        retuned = None
        if self.config.retuning and spec is not None:  # a clean model has no trigger to retune with
            retuned = {
                "before": self.retuned_suspect(suspect, clean, seed),
                "after": self.retuned(outcome.model, extractor, suspect, clean, seed),
            }
        if retuned is not None and self.config.retuning_reference:
            retuned["reference"] = self.retuned_reference(model_name, suspect, clean, seed)
        reinverted = (
            self.reinverted(suspect, model, outcome.model, extractor) if self.config.reinversion else None
        )
        relapsed = None
        if self.config.relapse:
            relapsed = relapse_check(
                outcome.model, extractor, clean, test=self.dataset[self.data_args.test_split], triggered=triggered,
                target=spec.target_label if spec else None, suspect=model,
                clips=reinversion_clips(self.dataset["validation"]), detection=self.detection(suspect, model, extractor),
                config=RelapseConfig(**{**self.config.relapse_settings, "seed": seed}),
            )  # fmt: skip
        curve = None
        if self.config.interpolation_points:
            curve = interpolation_curve(model, outcome.model, extractor, self.dataset[self.data_args.test_split],
                                        triggered, spec.target_label if spec else None,
                                        self.config.interpolation_points)  # fmt: skip
        return {
            "model": model_name,
            "trigger": trigger_name(trigger),
            "defense": defense,
            "method": entry.method,
            "knob": entry.knob_name,
            "value": value,
            "seed": seed,
            "before": {k: before[k] for k in ("clean_accuracy", "attack_success_rate", "robust_accuracy")},
            "after": {k: v for k, v in after.to_dict().items() if not k.startswith("num_")},
            "der": after.der_against(before_metrics) if spec is not None else None,
            "validation_accuracy": {
                "before": before["validation_accuracy"],
                "after": self._validation_accuracy(outcome.model, extractor),
            },  # fmt: skip
            "seconds": round(seconds, 4),  # data-free defenses take milliseconds
            "peak_mib": peak["mib"],
            "settings": settings,
            "clean_rows": len(clean),
            "retuned": retuned,
            "reinversion": reinverted,
            "relapse": relapsed,
            "interpolation": curve,
            "machine": machine_description(),  # time ratios compare cells measured on the same kind of machine
            "info": {
                key: value for key, value in outcome.info.items() if not key.endswith(("log_history", "_log"))
            },
        }

    def cell_row(self, cell: tuple) -> dict:
        """The results row of one cell: `run_cell`'s, or an `unsupported` row when the defense refuses the model."""
        try:
            return self.run_cell(*cell)
        except UnsupportedModelError as error:  # e.g. TSBD on a network without the neurons it ranks
            model, trigger, defense, value, seed = cell
            return {"model": model, "trigger": trigger_name(trigger), "defense": defense, "value": value,
                    "seed": seed, "unsupported": str(error)}  # fmt: skip

    def _append(self, row: dict) -> None:
        with open(self.results_path, "a") as handle:  # one whole line per cell, flushed at once
            handle.write(json.dumps(row, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _report_cell(self, row: dict, position: str, seconds: float) -> None:
        cell = f"{row['model']} {row['trigger']} {row['defense']}"
        if row.get("unsupported"):
            print(f"[{position}] {cell}: unsupported ({row['unsupported']})", flush=True)
        elif row.get("failed"):
            print(f"[{position}] {cell} value={row['value']:g} seed {row['seed']}: FAILED ({row['failed']})",
                  flush=True)  # fmt: skip
        else:
            asr = row["after"]["attack_success_rate"]
            print(
                f"[{position}] {cell} {row['knob']}={row['value']:g} seed {row['seed']}: "
                f"CA {100 * row['after']['clean_accuracy']:.1f}"
                + (f" ASR {100 * asr:.1f}" if asr is not None else "")
                + (f" ({seconds:.0f} s)" if seconds else ""),
                flush=True,
            )

    def run(
        self,
        limit: int | None = None,
        executor: ExecutorSettings | None = None,
        only: Sequence[str] | None = None,
    ) -> list[dict]:
        """Run every unfinished cell (at most `limit`), appending each result as soon as it is done. A failed cell
        (recorded by the Ray executor) counts as unfinished: it runs again.

        Args:
            limit: the most cells to run now.
            executor: where the cells run (default: the grid's `executor` and `resources`; serial unless it says
                `ray`).
            only: run only these suspects' cells now (`MODEL` or `MODEL/TRIGGER`, see `select`); the rest of the
                grid stays unfinished, for a later run.
        """
        # a name that is no suspect of the grid fails before anything is written
        selected = self.select(only) if only else None
        executor = executor or ExecutorSettings.from_grid(self.config.executor, self.config.resources)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        machine = self.output_dir / "machine.json"
        if not machine.exists():
            atomic_write_text(machine, json.dumps(machine_description(), indent=2))
        rows = self.rows()
        self._finished = [r for r in rows if not r.get("failed")]
        done = {
            self.key(r["model"], r["trigger"], r["defense"], r["value"], r["seed"]) for r in self._finished
        }
        cells = self.cells()
        total, finished_before = len(cells), sum(self.key(*cell) in done for cell in cells)
        todo = [cell for cell in (cells if selected is None else selected) if self.key(*cell) not in done]
        print(f"benchmark: {finished_before} of {total} cells done, {len(todo)} to run"
              f"{' on Ray' if executor.executor == 'ray' else ''}", flush=True)  # fmt: skip
        todo = todo[:limit] if limit is not None else todo
        if executor.executor == "ray":
            return rows + self._run_on_ray(todo, executor, finished_before, total)
        if executor.threads is not None:
            pin_threads(executor.threads)
        for index, cell in enumerate(todo, start=1):
            started = time.perf_counter()
            row = self.cell_row(cell)
            self._append(row)
            rows.append(row)
            self._report_cell(row, f"{finished_before + index}/{total}", time.perf_counter() - started)
        return rows

    def _run_on_ray(
        self, todo: list[tuple], executor: ExecutorSettings, offset: int, total: int
    ) -> list[dict]:
        """The cells of `todo` as Ray tasks: one task per suspect (training it when missing, then its once-per-
        suspect measurements) and one per cell, which starts when its suspect's task is done. Only this process
        (the driver) writes `results.jsonl`, one whole line per finished cell in the order they finish; a cell
        whose task raised is recorded as failed with its error, and the others go on."""
        ray = start_ray(executor)
        config = copy.deepcopy(self.config)
        # the workers see the grid's folders by absolute path (shared storage on a cluster); no row holds them
        config.output_dir = str(self.output_dir.resolve())
        config.suspects_dir = str(self.suspects_dir.resolve())
        self.suspects_dir.mkdir(parents=True, exist_ok=True)
        self.dataset  # noqa: B018 -- the driver prepares the data once (the synthetic corpus is written once)
        suspect_threads = executor.task_threads(executor.suspect)
        cell_threads = executor.task_threads(executor.cell)
        trained: dict[tuple, Any] = {}
        measured: dict[tuple, Any] = {}

        def train(model: str, trigger: Any) -> Any:
            key = (model, trigger_name(trigger))
            if key not in trained:
                trained[key] = run_remote(ray, _train_suspect_task, executor.suspect, config, model, trigger,
                                          suspect_threads)  # fmt: skip
            return trained[key]

        cells: dict[Any, tuple] = {}
        for cell in todo:
            model, trigger = cell[0], cell[1]
            key = (model, trigger_name(trigger))
            if key not in measured:
                needs = [train(model, trigger)]
                if config.retuning and config.retuning_reference and trigger != CLEAN:
                    needs.append(
                        train(model, CLEAN)
                    )  # the clean reference is retuned with this suspect's trigger
                finished = [r for r in self._finished if (r["model"], r["trigger"]) == key]
                seeds = sorted({c[4] for c in todo if (c[0], trigger_name(c[1])) == key})
                measured[key] = run_remote(ray, _measure_suspect_task, executor.suspect, config, model, trigger,
                                           seeds, suspect_threads, finished, *needs)  # fmt: skip
            cells[run_remote(ray, _cell_task, executor.cell, config, cell, cell_threads, measured[key])] = (
                cell
            )
        started = time.perf_counter()
        rows = []
        for index, (ref, row, error) in enumerate(as_completed(ray, list(cells)), start=1):
            if error is not None:
                model, trigger, defense, value, seed = cells[ref]
                message = describe_task_error(error).replace(config.output_dir, self.config.output_dir)
                message = message.replace(config.suspects_dir, str(self.config.suspects_dir or "suspects"))
                row = {"model": model, "trigger": trigger_name(trigger), "defense": defense, "value": value,
                       "seed": seed, "failed": message}  # fmt: skip
            self._append(row)
            rows.append(row)
            self._report_cell(
                row, f"{offset + index}/{total}, {time.perf_counter() - started:.0f} s into the run", 0
            )
        return rows


def _check_visible(config: BenchmarkConfig) -> None:
    """A worker must see the grid's folders (the driver made them): on a cluster they live on storage that every
    node mounts."""
    for folder in (config.output_dir, config.suspects_dir):
        if folder and not Path(folder).is_dir():
            raise BenchmarkConfigError(
                f"this worker ({machine_description()}) cannot see the grid's folder {folder}: on a Ray cluster the "
                "grid's output_dir and suspects_dir must be on storage every node mounts at the same path (NFS, a "
                "mounted bucket)"
            )


def _train_suspect_task(config: BenchmarkConfig, model: str, trigger: Any, threads: int) -> str:
    """Ray task: the suspect of (model, trigger), trained when missing; returns its folder's name."""
    pin_threads(threads)
    _check_visible(config)
    return Benchmark(config).suspect(model, trigger).name


def _measure_suspect_task(
    config: BenchmarkConfig,
    model: str,
    trigger: Any,
    seeds: list[int],
    threads: int,
    finished: list[dict],
    *trained: str,
) -> dict:
    """Ray task: `Benchmark.measure_suspect` (after the suspect and its clean reference were trained: `trained`)."""
    pin_threads(threads)
    _check_visible(config)
    benchmark = Benchmark(config)
    benchmark._finished = finished
    return benchmark.measure_suspect(model, trigger, seeds)


def _cell_task(config: BenchmarkConfig, cell: tuple, threads: int, measured: dict) -> dict:
    """Ray task: one cell's row, with its suspect's measurements from the suspect's task."""
    pin_threads(threads)
    _check_visible(config)
    benchmark = Benchmark(config)
    if measured.get("detection") is not None:
        benchmark._detections[benchmark.suspect(cell[0], cell[1]).name] = measured["detection"]
    return benchmark.cell_row(cell)


# ------------------------------------------------------------------------------------------- reports


def _pct(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def _retuned_asr(runs: list[dict], which: str) -> str:
    """Mean ± std ASR after the retuning check ("before": of the suspect, "after": of the defended model)."""
    values = [r["retuned"][which]["attack_success_rate"] for r in runs if (r.get("retuned") or {}).get(which)]
    if which in ("before", "reference"):  # the suspect's (the clean model's), once per clean subset
        values = list({r["seed"]: r["retuned"][which]["attack_success_rate"] for r in runs
                       if (r.get("retuned") or {}).get(which)}.values())  # fmt: skip
    return _pct(values) if values else ""


def _mean_reinversion(runs: list[dict]) -> float | None:
    """The mean over runs of the largest re-inversion success ([`hf_gnft.pipeline.record_reinversion`]: on the
    defended model and after the relapse fine-tunes); `None` when no run has a suspected target."""
    values = [value for value in map(record_reinversion, runs) if value is not None]
    return statistics.mean(values) if values else None


def _relapse_by_rate(runs: list[dict]) -> dict[float, list[float]]:
    """Relapse learning rate -> the ASRs after the relapse check's clean fine-tune at it, in rate order."""
    by_rate: dict[float, list[float]] = {}
    for run in runs:
        for entry in (run.get("relapse") or {}).get("runs") or []:
            if entry.get("attack_success_rate") is not None:
                by_rate.setdefault(entry["learning_rate"], []).append(entry["attack_success_rate"])
    return dict(sorted(by_rate.items()))


def _relapse_asr(runs: list[dict]) -> str:
    """Mean ± std ASR after the relapse check's clean fine-tunes, one per learning rate ("a / b")."""
    return " / ".join(_pct(values) for values in _relapse_by_rate(runs).values())


def _relapse_rates(rows: list[dict]) -> str:
    rates = sorted({e["learning_rate"] for r in rows for e in (r.get("relapse") or {}).get("runs") or []})
    return " / ".join(f"{rate:g}" for rate in rates)


def _reinversion(runs: list[dict], which: str) -> str:
    """Mean ± std of the re-inversion check's largest success (`max_success_before`: the suspect's)."""
    values = [
        r["reinversion"][which] for r in runs if r.get("reinversion") and r["reinversion"][which] is not None
    ]
    return _pct(values) if values else ""


def choose_cells(rows: list[dict], config: BenchmarkConfig) -> dict[tuple, tuple[float, list[dict]]]:
    """(model, trigger, defense) -> (chosen knob value, its runs), by the defender's rule on clean data: the mean
    validation drop over seeds within the limit, then the least re-invertible value (when the cells have the
    re-inversion check), then the strongest."""
    groups: dict[tuple, dict[float, list[dict]]] = {}
    for row in rows:
        if row["defense"] not in config.defenses or row.get("unsupported"):
            continue
        groups.setdefault((row["model"], row["trigger"], row["defense"]), {}).setdefault(
            float(row["value"]), []
        ).append(row)
    chosen = {}
    for key, by_value in groups.items():
        entry = config.defenses[key[2]]
        drops = {value: statistics.mean(validation_drop(r) for r in runs) for value, runs in by_value.items()}
        value = choose_candidate(
            drops,
            {value: _mean_reinversion(runs) for value, runs in by_value.items()},
            config.max_validation_drop,
            larger_is_stronger=entry.stronger_when_larger,
        )
        if value is not None:
            chosen[key] = (value, by_value[value])
    return chosen


def closest_cells(rows: list[dict], key: tuple) -> tuple[float, list[dict]]:
    """(value, its runs) of (model, trigger, defense) `key` with the smallest mean validation drop over seeds: what
    the table shows, marked, where no value kept the drop within the limit."""
    by_value: dict[float, list[dict]] = {}
    for row in rows:
        if (row["model"], row["trigger"], row["defense"]) == key and not row.get("unsupported"):
            by_value.setdefault(float(row["value"]), []).append(row)
    value = min(by_value, key=lambda v: statistics.mean(validation_drop(r) for r in by_value[v]))
    return value, by_value[value]


def reference_costs(rows: list[dict], config: BenchmarkConfig) -> dict[tuple, tuple[float, float | None]]:
    """(model, trigger, machine) -> the mean wall time and peak memory of every run of the reference defense
    (`config.reference`, plain FT) on that suspect and kind of machine, whatever value the rule chose: the cost
    unit of the time and memory ratios."""
    reference: dict[tuple, tuple[float, float | None]] = {}
    for model, trigger, machine in {(r["model"], r["trigger"], r.get("machine")) for r in rows}:
        runs = [
            r
            for r in rows
            if (r["model"], r["trigger"], r["defense"], r.get("machine"))
            == (model, trigger, config.reference, machine)
        ]
        if runs:
            memory = [r["peak_mib"] for r in runs if r["peak_mib"]]
            reference[(model, trigger, machine)] = (
                statistics.mean(r["seconds"] for r in runs),
                statistics.mean(memory) if memory else None,
            )
    return reference


def summarise(rows: list[dict], config: BenchmarkConfig) -> str:
    """The markdown table: per model and attack, each defense at its chosen knob value (mean ± std over
    seeds), with its wall time and peak memory relative to the reference defense's in the same run; a defense
    that refused a model (`unsupported` cells) says so."""
    failed = failed_cells(rows)
    refused = {(r["model"], r["trigger"], r["defense"]) for r in rows if r.get("unsupported")}
    rows = [r for r in rows if not r.get("unsupported") and not r.get("failed")]
    chosen = choose_cells(rows, config)
    reference = reference_costs(rows, config)
    lines = [
        f"Each defense at the knob value chosen on clean validation data (the strongest with a mean drop ≤ "
        f"{100 * config.max_validation_drop:g} pp, or with the re-inversion check the least re-invertible of those); CA / ASR / RA in %, mean ± std over seeds; time and memory "
        f"relative to the mean of all {config.reference!r} runs on the same suspect. '— (closest: ...)': no value "
        f"qualified; the row shows the value with the smallest mean validation drop, which the rule would not publish. ASR after "
        f"retuning: after fine-tuning on 5 triggered clips mixed into the clean subset (Min et al., NeurIPS 2024), "
        f"when the grid runs the check; the backdoored row shows the suspect's. Re-inversion: the largest share of "
        f"held-out clean validation clips a fresh inversion sends to a suspected target (clean data only; with "
        f"it, the rule prefers the least re-invertible value within the drop). ASR after relapse: after the FT "
        f"defense on the clean subset alone at lr {_relapse_rates(rows) or '—'} (no trigger; the relapse check), "
        f"when the grid runs it; its re-inversion counts in the rule's re-inversion. Clean reference: the "
        f"retuning check on the model trained without poisoning, with the same trigger and target.",
        "",
        "| model | attack | defense | knob | CA | ASR | RA | DER | ASR after relapse | ASR after retuning "
        "| clean reference | re-inversion | time × | memory × |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    suspects = sorted({(r["model"], r["trigger"]) for r in rows if r["trigger"] != CLEAN})
    for model, trigger in suspects:
        before = next(r["before"] for r in rows if (r["model"], r["trigger"]) == (model, trigger))
        suspect_rows = [
            r for r in rows if (r["model"], r["trigger"]) == (model, trigger) and r.get("retuned")
        ]
        lines.append(
            f"| {model} | {trigger} | backdoored | | {100 * before['clean_accuracy']:.1f} "
            f"| {100 * before['attack_success_rate']:.1f} | {100 * before['robust_accuracy']:.1f} | | "
            f"| {_retuned_asr(suspect_rows, 'before')} | {_retuned_asr(suspect_rows, 'reference')} "
            f"| {_reinversion(suspect_rows, 'max_success_before')} | | |"
        )
        for defense, choice in _choices(rows, chosen, config, model, trigger, refused):
            if choice == UNSUPPORTED:
                lines.append(f"| {model} | {trigger} | {defense} | {choice} | | | | | | | | | | |")
                continue
            missed = choice is None
            value, runs = closest_cells(rows, (model, trigger, defense)) if missed else choice
            time_ratio = _time_ratio(runs, reference, model, trigger)
            memory_ratio = _memory_ratio(runs, reference, model, trigger)
            knob = f"{runs[0]['knob']}={value:g}"
            if missed:
                knob = f"— (closest: {knob}, validation drop {_pct([validation_drop(r) for r in runs])})"
            lines.append(
                f"| {model} | {trigger} | {defense} | {knob} "
                f"| {_pct([r['after']['clean_accuracy'] for r in runs])} "
                f"| {_pct([r['after']['attack_success_rate'] for r in runs])} "
                f"| {_pct([r['after']['robust_accuracy'] for r in runs])} "
                f"| {statistics.mean(r['der'] for r in runs):.3f} | {_relapse_asr(runs)} "
                f"| {_retuned_asr(runs, 'after')} | {_retuned_asr(runs, 'reference')} "
                f"| {_reinversion(runs, 'max_success_after')} | {time_ratio} | {memory_ratio} |"
            )
    if any(r["trigger"] == CLEAN for r in rows):
        lines += ["", *_clean_model_table(rows, config, chosen, reference, refused)]
    if len({r.get("machine") for r in rows}) > 1:
        lines += ["", "The cells ran on more than one kind of machine (each row's `machine`): a time or memory "
                  "ratio compares a cell only with the reference's cells on the same kind of machine."]  # fmt: skip
    if failed:
        lines += ["", f"Failed cells ({len(failed)}; a re-run retries them):", "",
                  "| model | attack | defense | value | seed | error |", "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['model']} | {r['trigger']} | {r['defense']} | {float(r['value']):g} | {r['seed']} "
                  f"| {r['failed'].replace('|', '/')} |" for r in failed]  # fmt: skip
    return "\n".join(lines)


#: the targets a defense is judged against (issues 12 and 26): the ASR left, and after the relapse fine-tunes
TARGET_ASR = {"noise_burst": 0.05, "tone": 0.05, "pbsm": 0.20, "style": 0.20}
TARGET_RELAPSE_ASR = {"noise_burst": 0.10, "tone": 0.10, "pbsm": 0.25, "style": 0.25}
#: the most a defense may cost a model trained without poisoning, in clean accuracy
TARGET_CLEAN_COST = 0.01
#: how far above the clean model's retuned ASR a defended model's may end
TARGET_RETUNED_MARGIN = 0.10
#: the most a defense's wall time may be, in multiples of the reference defense's (plain FT) in the same run
TARGET_COST_RATIO = 5.0


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def headline(rows: list[dict], config: BenchmarkConfig, defense: str) -> str:
    """One row per suspect for `defense` at the rule's choice (mean over seeds) with a plain verdict listing every
    target it misses: ASR (`TARGET_ASR`), the 2-point validation rule, the ASR after the relapse fine-tunes
    (`TARGET_RELAPSE_ASR`, the worse learning rate), the retuned ASR within `TARGET_RETUNED_MARGIN` of the clean
    model's, and the wall time within `TARGET_COST_RATIO` of the reference defense's; and per clean model, its CA
    cost (`TARGET_CLEAN_COST`). Where no value passes the rule, the row shows the closest and judges it too."""
    rows = [r for r in rows if not r.get("unsupported") and not r.get("failed")]
    chosen = choose_cells(rows, config)
    costs = reference_costs(rows, config)
    lines = [
        "| model | attack | before CA / ASR | setting (rule's choice) | CA | ASR | validation drop "
        f"| ASR after relapse | ASR after retuning (clean model's) | time × {config.reference} | seeds | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    suspects = {(r["model"], r["trigger"]) for r in rows}
    for model, trigger in sorted(suspects, key=lambda pair: (pair[1] == CLEAN, pair)):  # clean models last
        runs_here = [r for r in rows if (r["model"], r["trigger"], r["defense"]) == (model, trigger, defense)]
        if not runs_here:
            continue
        runs, setting, misses = _headline_choice(rows, chosen, config, (model, trigger, defense))
        unmeasured: list[str] = []
        before = runs_here[0]["before"]
        if trigger == CLEAN:
            cost = _mean([r["before"]["clean_accuracy"] - r["after"]["clean_accuracy"] for r in runs])
            if cost > TARGET_CLEAN_COST:
                misses.append(f"CA cost {100 * cost:.1f} > {100 * TARGET_CLEAN_COST:g}")
            head = f"| {model} | none (trained clean) | {100 * before['clean_accuracy']:.1f} / — "
            asr = relapse = retuned = ""
        else:
            missed, unmeasured = _backdoor_misses(trigger, runs)
            misses += missed
            head = (f"| {model} | {trigger} | {100 * before['clean_accuracy']:.1f} / "
                    f"{100 * before['attack_success_rate']:.1f} ")  # fmt: skip
            reference = _retuned_asr(runs, "reference")
            asr = _pct([r["after"]["attack_success_rate"] for r in runs])
            relapse = _relapse_asr(runs)
            retuned = _retuned_asr(runs, "after") + (f" ({reference})" if reference else "")
        time_ratio = _ratio(runs, costs, model, trigger, 0, "seconds")
        if time_ratio is None:
            unmeasured.append(f"time × {config.reference}")
        elif time_ratio > TARGET_COST_RATIO:
            misses.append(f"time {time_ratio:.1f}× {config.reference} > {TARGET_COST_RATIO:g}×")
        verdict = "meets the targets" if not misses else "**misses**: " + "; ".join(misses)
        if unmeasured:
            verdict += f" (not measured: {', '.join(unmeasured)})"
        if len(runs) < len(config.seeds):
            verdict += f" ({len(runs)} of {len(config.seeds)} seeds so far)"
        ratio = f"{time_ratio:.1f}" if time_ratio is not None else ""
        lines.append(
            head + f"| {setting} | {_pct([r['after']['clean_accuracy'] for r in runs])} | {asr} "
            f"| {_pct([validation_drop(r) for r in runs])} | {relapse} | {retuned} | {ratio} | {len(runs)} "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def _headline_choice(
    rows: list[dict], chosen: dict[tuple, tuple[float, list[dict]]], config: BenchmarkConfig, key: tuple
) -> tuple[list[dict], str, list[str]]:
    """The runs of the rule's value for `key`, its setting's text and the misses so far: where no value passes
    the rule, the closest value's runs, marked, and the validation rule missed."""
    if key in chosen:
        value, runs = chosen[key]
        return runs, f"{runs[0]['knob']}={value:g}", []
    value, runs = closest_cells(rows, key)
    drop = statistics.mean(validation_drop(r) for r in runs)
    return (
        runs,
        f"none passes the rule (closest {runs[0]['knob']}={value:g})",
        [
            f"validation drop > {100 * config.max_validation_drop:g} at every setting (closest {100 * drop:.1f})"
        ],
    )


def _backdoor_misses(trigger: str, runs: list[dict]) -> tuple[list[str], list[str]]:
    """The backdoor targets `runs` miss (ASR, relapse, retuning against the clean model's), and the checks that
    were not measured."""
    misses = []
    asr = _mean([r["after"]["attack_success_rate"] for r in runs])
    if trigger in TARGET_ASR and asr is not None and asr > TARGET_ASR[trigger]:
        misses.append(f"ASR {100 * asr:.1f} > {100 * TARGET_ASR[trigger]:g}")
    relapses = [_mean(values) for values in _relapse_by_rate(runs).values()]
    worst = max((x for x in relapses if x is not None), default=None)
    if trigger in TARGET_RELAPSE_ASR and worst is not None and worst > TARGET_RELAPSE_ASR[trigger]:
        misses.append(f"relapse {100 * worst:.1f} > {100 * TARGET_RELAPSE_ASR[trigger]:g}")
    retuned = _mean([r["retuned"]["after"]["attack_success_rate"] for r in runs
                     if (r.get("retuned") or {}).get("after")])  # fmt: skip
    reference = _mean([r["retuned"]["reference"]["attack_success_rate"] for r in runs
                       if (r.get("retuned") or {}).get("reference")])  # fmt: skip
    if retuned is not None and reference is not None and retuned > reference + TARGET_RETUNED_MARGIN:
        misses.append(
            f"retuned {100 * retuned:.1f} > clean {100 * reference:.1f} + {100 * TARGET_RETUNED_MARGIN:g}"
        )
    unmeasured = [name for name, value in (("relapse", worst), ("clean model's retuning", reference))
                  if value is None]  # fmt: skip
    return misses, unmeasured


def failed_cells(rows: list[dict]) -> list[dict]:
    """The failed rows (recorded by the Ray executor) of cells that have not finished since, last failure each."""
    finished = {Benchmark.key(r["model"], r["trigger"], r["defense"], r["value"], r["seed"])
                for r in rows if not r.get("failed")}  # fmt: skip
    latest = {}
    for row in rows:
        key = Benchmark.key(row["model"], row["trigger"], row["defense"], row["value"], row["seed"])
        if row.get("failed") and key not in finished:
            latest[key] = row
    return list(latest.values())


def _choices(
    rows: list[dict],
    chosen: dict[tuple, tuple[float, list[dict]]],
    config: BenchmarkConfig,
    model: str,
    trigger: str,
    refused: set[tuple],
):
    """(defense, its (chosen value, runs), `None` when no value qualified, or `UNSUPPORTED` when the defense
    refused the model) for each defense that ran on the suspect, in the grid's order."""
    for defense in config.defenses:
        key = (model, trigger, defense)
        if key in chosen:
            yield defense, chosen[key]
        elif any((r["model"], r["trigger"], r["defense"]) == key for r in rows):
            yield defense, None
        elif key in refused:
            yield defense, UNSUPPORTED


def _ratio(runs: list[dict], reference: dict, model: str, trigger: str, which: int, key: str) -> float | None:
    """The mean over the runs of their `key` over the reference defense's mean on the same suspect and the same
    kind of machine (runs without a reference on their machine are left out); `None` when there is none."""
    ratios = []
    for run in runs:
        unit = reference.get((model, trigger, run.get("machine")), (None, None))[which]
        if unit and run.get(key):
            ratios.append(run[key] / unit)
    return statistics.mean(ratios) if ratios else None


def _time_ratio(runs: list[dict], reference: dict, model: str, trigger: str) -> str:
    """The runs' mean wall time over the reference defense's on the same suspect and kind of machine."""
    ratio = _ratio(runs, reference, model, trigger, 0, "seconds")
    return f"{ratio:.2g}" if ratio is not None else ""


def _memory_ratio(runs: list[dict], reference: dict, model: str, trigger: str) -> str:
    ratio = _ratio(runs, reference, model, trigger, 1, "peak_mib")
    return f"{ratio:.2f}" if ratio is not None else ""


def _clean_model_table(
    rows: list[dict],
    config: BenchmarkConfig,
    chosen: dict[tuple, tuple[float, list[dict]]],
    reference: dict,
    refused: set[tuple],
) -> list[str]:
    """The `clean_models` table: what each defense, at the knob the same rule chooses, costs a model trained
    without poisoning."""
    lines = [
        "Clean models (the same data and training without poisoning): each defense at the knob value the same rule "
        "chooses; CA on the test split before and after, its drop, and the clean validation drop, in points "
        "(mean ± std over seeds). Re-inversion: as above (empty: no class stood out in the model's inversion).",
        "",
        "| model | defense | knob | CA before | CA after | CA drop | validation drop | re-inversion | time × |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in sorted({r["model"] for r in rows if r["trigger"] == CLEAN}):
        for defense, choice in _choices(rows, chosen, config, model, CLEAN, refused):
            if choice == UNSUPPORTED:
                lines.append(f"| {model} | {defense} | {choice} | | | | | | |")
                continue
            missed = choice is None
            value, runs = closest_cells(rows, (model, CLEAN, defense)) if missed else choice
            knob = f"{runs[0]['knob']}={value:g}"
            if missed:
                knob = f"— (closest: {knob})"
            before = runs[0]["before"]["clean_accuracy"]
            drops = [before - r["after"]["clean_accuracy"] for r in runs]
            lines.append(
                f"| {model} | {defense} | {knob} | {100 * before:.1f} "
                f"| {_pct([r['after']['clean_accuracy'] for r in runs])} | {_pct(drops)} "
                f"| {_pct([validation_drop(r) for r in runs])} | {_reinversion(runs, 'max_success_after')} "
                f"| {_time_ratio(runs, reference, model, CLEAN)} |"
            )
    return lines


def decorate_ca_asr_axis(axis: Any, title: str, clean_accuracy_before: float, target_asr: float) -> None:
    """Title, labels, grid, and dotted lines at the target ASR (%) and at a CA 2 points below the suspect's."""
    axis.axvline(target_asr, color="grey", linestyle=":", linewidth=1)
    axis.axhline(100 * clean_accuracy_before - 2, color="grey", linestyle=":", linewidth=1)
    axis.set_title(title, fontsize=9)
    axis.set_xlabel("ASR % (lower is better)")
    axis.set_ylabel("CA % (higher is better)")
    axis.set_xlim(-2, 102)
    axis.grid(alpha=0.3)


def plot(rows: list[dict], config: BenchmarkConfig, output_dir: Path) -> list[Path]:
    """`ca_vs_asr.png` (one panel per suspect; every grid value, seed means joined in knob order) and
    `der.png` (DER at the chosen value, bars per defense, grouped by attack)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a model without a backdoor has no ASR to plot; a defense that refused a model has nothing to plot
    rows = [r for r in rows if r["trigger"] != CLEAN and not r.get("unsupported")]
    suspects = sorted({(r["model"], r["trigger"]) for r in rows})
    defenses = [d for d in config.defenses if any(r["defense"] == d for r in rows)]
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(defenses)}
    columns = min(4, len(suspects))
    n_rows = -(-len(suspects) // columns)
    figure, axes = plt.subplots(n_rows, columns, figsize=(4.4 * columns, 3.9 * n_rows), squeeze=False)
    for axis, (model, trigger) in zip(axes.flat, suspects, strict=False):
        subset = [r for r in rows if (r["model"], r["trigger"]) == (model, trigger)]
        before = subset[0]["before"]
        axis.scatter([100 * before["attack_success_rate"]], [100 * before["clean_accuracy"]], c="k", marker="*",
                     s=120, label="backdoored", zorder=3)  # fmt: skip
        for defense in defenses:
            runs = [r for r in subset if r["defense"] == defense]
            if not runs:
                continue
            values = sorted({float(r["value"]) for r in runs})
            means = [
                (statistics.mean(100 * r["after"]["attack_success_rate"] for r in runs if float(r["value"]) == v),
                 statistics.mean(100 * r["after"]["clean_accuracy"] for r in runs if float(r["value"]) == v))
                for v in values
            ]  # fmt: skip
            axis.plot([m[0] for m in means], [m[1] for m in means], marker="o", color=colours[defense],
                      label=defense, linewidth=1.2, markersize=4)  # fmt: skip
        decorate_ca_asr_axis(axis, f"{model} / {trigger}", before["clean_accuracy"], target_asr=5.0)
    for axis in list(axes.flat)[len(suspects) :]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="lower left")
    title = "CA vs ASR over each defense's grid (seed means); dotted: ASR 5%, CA − 2 pp"
    figure.suptitle(title if columns > 1 else title.replace("; ", "\n"), fontsize=10)  # one panel: two lines
    figure.tight_layout()
    curves = output_dir / "ca_vs_asr.png"
    figure.savefig(curves, dpi=110)
    plt.close(figure)

    chosen = choose_cells(rows, config)
    figure, axis = plt.subplots(
        figsize=(min(16.0, max(6.0, 1.3 * len(suspects) * max(1, len(defenses)) / 3)), 4.5)
    )
    width = 0.8 / max(1, len(defenses))
    for index, defense in enumerate(defenses):
        heights = []
        for model, trigger in suspects:
            runs = chosen.get((model, trigger, defense), (None, []))[1]
            heights.append(statistics.mean(r["der"] for r in runs) if runs else 0.0)
        axis.bar([i + index * width for i in range(len(suspects))], heights, width, label=defense,
                 color=colours[defense])  # fmt: skip
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(suspects))])
    axis.set_xticklabels([f"{m}\n{t}" for m, t in suspects], fontsize=7)
    axis.set_ylabel("DER (0.5 = no effect, 1 = ideal)")
    axis.set_ylim(0, 1)
    axis.axhline(0.5, color="grey", linewidth=0.8)
    axis.legend(fontsize=7, ncol=min(4, len(defenses)))
    axis.set_title("DER at the knob value chosen on clean validation data", fontsize=10)
    figure.tight_layout()
    bars = output_dir / "der.png"
    figure.savefig(bars, dpi=110)
    plt.close(figure)
    written = [curves, bars]
    if any(r.get("interpolation") for r in rows):
        written.append(plot_interpolation(rows, chosen, defenses, suspects, colours, output_dir))
    return written


def plot_interpolation(
    rows: list[dict],
    chosen: dict[tuple, tuple[float, list[dict]]],
    defenses: list[str],
    suspects: list[tuple[str, str]],
    colours: dict[str, Any],
    output_dir: Path,
) -> Path:
    """`interpolation.png`: per suspect, ASR (solid) and CA (dashed) along θ_suspect + w · (θ_defended −
    θ_suspect), for each defense at its chosen value (or the closest, where none qualified), seed means."""
    import matplotlib.pyplot as plt

    columns = min(4, len(suspects))
    n_rows = -(-len(suspects) // columns)
    figure, axes = plt.subplots(n_rows, columns, figsize=(4.4 * columns, 3.6 * n_rows), squeeze=False)
    for axis, (model, trigger) in zip(axes.flat, suspects, strict=False):
        for defense in defenses:
            key = (model, trigger, defense)
            runs = chosen[key][1] if key in chosen else closest_cells(rows, key)[1] if any(
                (r["model"], r["trigger"], r["defense"]) == key for r in rows) else []  # fmt: skip
            curves = [r["interpolation"] for r in runs if r.get("interpolation")]
            if not curves:
                continue
            weights = [point["weight"] for point in curves[0]]
            for metric, style in (("attack_success_rate", "-"), ("clean_accuracy", "--")):
                means = [
                    statistics.mean(100 * curve[i][metric] for curve in curves) for i in range(len(weights))
                ]
                axis.plot(weights, means, style, color=colours[defense], linewidth=1.2,
                          label=defense if metric == "attack_success_rate" else None)  # fmt: skip
        axis.set_title(f"{model} / {trigger}", fontsize=9)
        axis.set_xlabel("w (0: suspect, 1: defended)")
        axis.set_ylabel("ASR % (solid), CA % (dashed)")
        axis.set_ylim(-2, 102)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(suspects) :]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="center left")
    figure.suptitle(
        "From the suspect's weights to each defended model's (chosen value, seed means)", fontsize=10
    )
    figure.tight_layout()
    path = output_dir / "interpolation.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def entry_description(entry: DefenseEntry) -> dict[str, Any]:
    """A grid entry's fields for the report; `suspects` only where the entry is restricted."""
    described = asdict(entry)
    if entry.suspects is None:
        del described["suspects"]
    return described


def write_reports(rows: list[dict], config: BenchmarkConfig, output_dir: Path, command: str) -> str:
    """Write `results.md` (table, command, machine) and the plots; return the table."""
    table = summarise(rows, config)
    machine = machine_description()
    atomic_write_text(
        output_dir / "results.md",
        f"{table}\n\nCommand: `{command}`. Machine: {machine}.\n"
        f"Grid: {json.dumps({k: entry_description(v) for k, v in config.defenses.items()})}\n",
    )
    measured = [r for r in rows if not r.get("failed")]
    if any(r["trigger"] != CLEAN and not r.get("unsupported") for r in measured):
        plot(measured, config, output_dir)
    return table


__all__ = [
    "DEFENSE_METHODS",
    "Benchmark",
    "BenchmarkConfig",
    "BenchmarkConfigError",
    "BenchmarkSuspectError",
    "CLEAN",
    "DefenseEntry",
    "choose_cells",
    "failed_cells",
    "headline",
    "peak_memory",
    "plot",
    "summarise",
    "write_reports",
]
