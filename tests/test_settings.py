"""Every numeric setting of every registered config and argument class is checked before anything trains: NaN,
±inf and an out-of-range value are refused with an error that names the field (issue 28)."""

from __future__ import annotations

import dataclasses
import math
import re
import typing

import pytest

from hf_gnft import (
    AttackArguments,
    CleanDataArguments,
    DataArguments,
    DefenseArguments,
    KeywordTrainingArguments,
    ModelArguments,
    OutputArguments,
    RetuningConfig,
    SuspectModelArguments,
)
from hf_gnft.analysis import AnalysisArguments
from hf_gnft.benchmark import BenchmarkConfig
from hf_gnft.defenses import DEFENSE_METHODS, ORACLE_METHODS
from hf_gnft.executors import ExecutorSettings, TaskResources
from hf_gnft.lasting import RelapseConfig
from hf_gnft.scripts.push import PushArguments
from hf_gnft.settings import NUMERIC_RANGES, Range, check_numeric_settings

ARGUMENT_CLASSES = [
    KeywordTrainingArguments, DataArguments, CleanDataArguments, AttackArguments, ModelArguments,
    SuspectModelArguments, DefenseArguments, OutputArguments, RetuningConfig, RelapseConfig, AnalysisArguments,
    PushArguments, BenchmarkConfig, ExecutorSettings, TaskResources,
]  # fmt: skip
CONFIG_CLASSES = sorted(
    {method.config_class for method in [*DEFENSE_METHODS.values(), *ORACLE_METHODS.values()]},
    key=lambda c: c.__name__,
)
CLASSES = [*CONFIG_CLASSES, *ARGUMENT_CLASSES]
REQUIRED = {
    "output_dir": "/tmp/hf-gnft-settings-test", "folder": "outputs/x", "hub_model_id": "me/x", "defenses": {"ft": {}},
}  # fmt: skip


def numeric_fields(cls: type) -> list[str]:
    """The fields whose type holds an int or a float (alone, optional, or in a list)."""
    hints = typing.get_type_hints(cls)
    names = []
    for field in dataclasses.fields(cls):
        text = str(hints.get(field.name, "")).replace("typing.", "")
        if re.search(r"\b(int|float)\b", text):
            names.append(field.name)
    return names


def uncovered_fields(classes: list[type], ranges: dict[str, Range]) -> list[str]:
    return sorted(
        {f"{cls.__name__}.{name}" for cls in classes for name in numeric_fields(cls) if name not in ranges}
    )


def build(cls: type, **overrides):
    needed = {
        name: value for name, value in REQUIRED.items() if name in {f.name for f in dataclasses.fields(cls)}
    }
    return cls(**{**needed, **overrides})


CASES = [(cls, name) for cls in CLASSES for name in numeric_fields(cls)]


def test_every_numeric_field_of_every_class_has_a_range():
    assert (
        len(CASES) > 250
    )  # the TrainingArguments fields of each config, and every config's and argument's own
    assert uncovered_fields(CLASSES, NUMERIC_RANGES) == []


def test_a_field_without_a_range_is_found():
    """What the test above catches: a numeric field added later (here: a range removed) with no check."""
    ranges = {name: value for name, value in NUMERIC_RANGES.items() if name != "purify_mix_ratio"}
    assert uncovered_fields(CLASSES, ranges) == ["PurifyConfig.purify_mix_ratio"]


def test_the_defaults_pass():
    for cls in CLASSES:
        build(cls)


def bad_values(cls: type, name: str) -> list:
    """NaN, +inf, -inf and, where the range has one, a finite value outside it (in a list for a list field)."""
    allowed = NUMERIC_RANGES[name]
    values = [math.nan, math.inf, -math.inf]
    outside = allowed.outside()
    if outside is not None:
        values.append(int(outside) if allowed.integer and float(outside).is_integer() else outside)
    default = getattr(build(cls), name)
    hints = str(typing.get_type_hints(cls)[name])
    in_list = isinstance(default, list) or "list" in hints
    return [[value] if in_list else value for value in values]


@pytest.mark.parametrize("cls, name", CASES, ids=[f"{c.__name__}.{n}" for c, n in CASES])
def test_non_finite_and_out_of_range_values_are_refused_naming_the_field(cls, name):
    for value in bad_values(cls, name):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            build(cls, **{name: value})


def test_the_error_says_the_range():
    from hf_gnft.defenses import FTConfig, PurifyConfig

    with pytest.raises(ValueError, match=r"^learning_rate must be a finite number > 0, got nan$"):
        FTConfig(output_dir="/tmp/x", learning_rate=math.nan)
    with pytest.raises(ValueError, match=r"purify_interpolation_weight must be a finite number in \(0, 1\]"):
        PurifyConfig(output_dir="/tmp/x", purify_interpolation_weight=1.5)
    with pytest.raises(ValueError, match=r"max_steps must be an integer >= 1 \(or -1\), got 0"):
        KeywordTrainingArguments(output_dir="/tmp/x", max_steps=0)
    with pytest.raises(ValueError, match="seed"):
        check_numeric_settings(RetuningConfig(), {"seed": Range(5, 6)})
