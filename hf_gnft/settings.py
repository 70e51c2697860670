"""Every numeric setting's range, in one place, checked before anything trains.

`check_numeric_settings(config)` walks the fields of a settings dataclass (a defense's config with the
`TrainingArguments` fields it inherits, or an argument class of a recipe) and refuses any number that is not finite
or outside its range, naming the flag and the range:

    learning_rate must be a finite number > 0, got nan

`NUMERIC_RANGES` maps a field name to its `Range`; the same name means the same thing in every class that has it.
A numeric field with no entry is an error of the code, not of the user: `tests/test_settings.py` walks every field
of every registered config and argument class, so a field added later without a range fails there.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

INF = math.inf


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take.

    Args:
        low, high: the bounds (`-inf` / `inf`: none on that side); values are always finite.
        low_open, high_open: whether the bound itself is excluded.
        integer: whether the value must be a whole number.
        also: values outside the bounds that are allowed as sentinels (e.g. `max_steps` -1: no limit).
        optional: whether `None` (unset, the default's meaning) is allowed.
    """

    low: float = -INF
    high: float = INF
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    also: tuple[float, ...] = ()
    optional: bool = True

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low == -INF and self.high == INF:
            text = kind
        elif self.high == INF:
            text = f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        elif self.low == -INF:
            text = f"{kind} {'<' if self.high_open else '<='} {self.high:g}"
        else:
            text = (f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")  # fmt: skip
        if self.also:
            text += f" (or {', '.join(f'{v:g}' for v in self.also)})"
        return text

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if value in self.also:
            return True
        if self.integer and float(value) != int(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def outside(self) -> float | None:
        """A finite value this range refuses (for the tests), or `None` when every finite value is allowed."""
        for candidate in (self.low - 1, self.low, self.high, self.high + 1, 0.5):
            if math.isfinite(candidate) and candidate not in self.also and not self.accepts(candidate):
                return candidate
        return None


POSITIVE = Range(0, INF, low_open=True)
NON_NEGATIVE = Range(0, INF)
FRACTION = Range(0, 1)  # [0, 1]
OPEN_FRACTION = Range(0, 1, low_open=True)  # (0, 1]
COUNT = Range(1, INF, integer=True)  # an integer >= 1
NON_NEGATIVE_INTEGER = Range(0, INF, integer=True)
SEED = Range(0, 2**32 - 1, integer=True)
ANY_INTEGER = Range(integer=True)
ANY_NUMBER = Range()

#: field name -> its range (the same name means the same in every class)
NUMERIC_RANGES: dict[str, Range] = {
    # transformers.TrainingArguments (every defense config and KeywordTrainingArguments inherit them)
    "learning_rate": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "adam_beta1": Range(0, 1, high_open=True),
    "adam_beta2": Range(0, 1, high_open=True),
    "adam_epsilon": POSITIVE,
    "max_grad_norm": NON_NEGATIVE,
    "num_train_epochs": POSITIVE,
    "max_steps": Range(1, INF, integer=True, also=(-1,)),
    "warmup_steps": NON_NEGATIVE,  # steps, or a fraction < 1 of them
    "logging_steps": POSITIVE,
    "eval_steps": POSITIVE,
    "save_steps": POSITIVE,
    "save_total_limit": COUNT,
    "eval_delay": NON_NEGATIVE,
    "eval_accumulation_steps": COUNT,
    "gradient_accumulation_steps": COUNT,
    "per_device_train_batch_size": COUNT,
    "per_device_eval_batch_size": COUNT,
    "dataloader_num_workers": NON_NEGATIVE_INTEGER,
    "dataloader_prefetch_factor": COUNT,
    "label_smoothing_factor": Range(0, 1, high_open=True),
    "seed": SEED,
    "data_seed": SEED,
    "local_rank": Range(0, INF, integer=True, also=(-1,)),
    "ddp_timeout": Range(1, INF, integer=True),
    "ddp_bucket_cap_mb": COUNT,
    "neftune_noise_alpha": NON_NEGATIVE,
    "torch_empty_cache_steps": COUNT,
    # GN-FT
    "gn_alpha": NON_NEGATIVE,  # 0: plain fine-tuning; 1: SAM's step
    "gn_radius": POSITIVE,
    "gn_warmup_steps": NON_NEGATIVE,
    "gn_adaptive_eta": NON_NEGATIVE,
    # fine-pruning, NAD, ANP, CLP, TSBD
    "fp_layers": ANY_INTEGER,
    "fp_max_ratio": OPEN_FRACTION,
    "fp_step_ratio": OPEN_FRACTION,
    "fp_accuracy_tolerance": FRACTION,
    "nad_teacher_epochs": POSITIVE,
    "nad_beta": NON_NEGATIVE,
    "nad_layers": ANY_INTEGER,
    "nad_power": POSITIVE,
    "anp_eps": POSITIVE,
    "anp_alpha": FRACTION,
    "anp_steps": COUNT,
    "anp_mask_lr": POSITIVE,
    "anp_perturb_steps": COUNT,
    "anp_perturb_lr": POSITIVE,
    "anp_batch_size": COUNT,
    "anp_threshold": FRACTION,
    "anp_prune_number": NON_NEGATIVE_INTEGER,
    "anp_seed": SEED,
    "clp_u": NON_NEGATIVE,
    "clp_layers": ANY_INTEGER,
    "tsbd_unlearning_rate": POSITIVE,
    "tsbd_accuracy_floor": FRACTION,
    "tsbd_max_unlearning_steps": COUNT,
    "tsbd_unlearning_batch_size": COUNT,
    "tsbd_neuron_ratio": OPEN_FRACTION,
    "tsbd_weight_ratio": OPEN_FRACTION,
    # purification
    "purify_shape_min_success": OPEN_FRACTION,
    "purify_window_s": POSITIVE,
    "purify_repair_epochs": NON_NEGATIVE,
    "purify_repair_learning_rate": POSITIVE,
    "purify_fallback_learning_rate": POSITIVE,
    "purify_level_db": Range(-INF, 0),
    "purify_radius": POSITIVE,
    "purify_max_gain_db": POSITIVE,
    "purify_max_semitones": COUNT,
    "purify_steps": COUNT,
    "purify_shape_steps": COUNT,
    "purify_filter_steps": COUNT,
    "purify_rounds": COUNT,
    "purify_shape_rounds": COUNT,
    "purify_mix_ratio": POSITIVE,
    "purify_detection_radius": POSITIVE,
    "purify_detection_steps": COUNT,
    "purify_detection_threshold": NON_NEGATIVE,  # 0: every class with a positive gap is a candidate
    "purify_spectral_threshold": NON_NEGATIVE,
    "purify_max_targets": COUNT,
    "purify_confirm_success": OPEN_FRACTION,
    "purify_candidates": COUNT,
    "purify_inversion_clips": COUNT,
    "purify_distillation": FRACTION,
    "purify_repair_distillation": FRACTION,
    "purify_fallback_distillation": FRACTION,
    "purify_temperature": POSITIVE,
    "purify_interpolation_step": Range(0, 1, high_open=True),
    "purify_interpolation_weight": OPEN_FRACTION,
    "purify_interpolation_tolerance": NON_NEGATIVE,
    "purify_relearn_encoder_steps": NON_NEGATIVE_INTEGER,
    "purify_relearn_encoder_learning_rate": POSITIVE,
    "purify_relearn_encoder_mix": NON_NEGATIVE,
    "purify_relearn_encoder_crop_s": NON_NEGATIVE,
    "purify_relearn_upper_steps": NON_NEGATIVE_INTEGER,
    "purify_relearn_upper_learning_rate": POSITIVE,
    "oracle_target": NON_NEGATIVE_INTEGER,  # the evaluation-only oracle: the attack's target class
    # data, attack, defense pipeline, checks, analysis
    "synthetic_train_size": COUNT,
    "synthetic_validation_size": NON_NEGATIVE_INTEGER,
    "synthetic_test_size": COUNT,
    "synthetic_seed": SEED,
    "num_proc": COUNT,
    "sampling_rate": COUNT,
    "clean_fraction": OPEN_FRACTION,
    "clean_count": NON_NEGATIVE_INTEGER,  # 0: refused as an empty clean set, with that message
    "clean_seed": SEED,
    "poison_rate": OPEN_FRACTION,
    "poison_seed": SEED,
    "knob_grid": ANY_NUMBER,  # the knob's own range is its config's, checked per candidate
    "learning_rate_grid": POSITIVE,
    "max_validation_drop": FRACTION,
    "max_accuracy_drop": OPEN_FRACTION,
    "num_triggered": COUNT,
    "num_clean": NON_NEGATIVE_INTEGER,
    "momentum": Range(0, 1, high_open=True),
    "max_samples": COUNT,
    "category_threshold": POSITIVE,
    "batch_size": COUNT,
    "scan_max_clips": COUNT,
    "learning_rates": POSITIVE,
    # benchmark grids and their executors
    "seeds": SEED,
    "attack_epochs": POSITIVE,
    "min_suspect_accuracy": FRACTION,  # 0: the check is off
    "interpolation_points": Range(2, INF, integer=True, also=(0,)),  # 0: off; a line needs two ends
    "cpus": NON_NEGATIVE,  # of a Ray task; fractions allowed, as in Ray
    "gpus": NON_NEGATIVE,
    "threads": COUNT,
}


def is_numeric_value(value: Any) -> bool:
    """A number, or a list / tuple of them (booleans are not numbers here)."""
    if isinstance(value, (list, tuple)):
        return any(is_numeric_value(item) for item in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_numeric_settings(
    settings: Any, ranges: dict[str, Range] | None = None, error: type[Exception] = ValueError
) -> None:
    """Refuse any numeric field of the dataclass `settings` that is not finite or outside its range.

    Raises:
        error (`ValueError` unless the class has its own): `<field> must be <range>, got <value>`, naming the first
            bad field.
    """
    ranges = NUMERIC_RANGES if ranges is None else ranges
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name, None)
        if field.name not in ranges or value is None:
            continue
        allowed = ranges[field.name]
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if not allowed.accepts(item):
                raise error(f"{field.name} must be {allowed.describe()}, got {value!r}")


__all__ = ["NUMERIC_RANGES", "Range", "check_numeric_settings", "is_numeric_value"]
